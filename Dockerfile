# Suanli production image: gunicorn (web), Celery worker and Celery beat all run from it (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SUANLI_VAR_DIR=/app/var

WORKDIR /app
RUN useradd --system --create-home --uid 10001 suanli

# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
# Installed in place (-e) so that settings find templates/, static/ and locale/ beside the code in /app.
RUN pip install --no-deps -e . \
    && DJANGO_DEBUG=0 DJANGO_SECRET_KEY=collectstatic-at-build-time-only-never-used-at-run-time-0123456789 \
       DATABASE_URL=postgres://unused@localhost/unused EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend \
       python manage.py collectstatic --noinput \
    && mkdir -p /app/var \
    && chown suanli:suanli /app/var

USER suanli
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "-b", "0.0.0.0:8000", "--workers", "4", "--access-logfile", "-"]
