"""What several test modules share: helpers, data builders and fixtures. Test modules import from here (and from
tests/factories.py and tests/conftest.py), never from one another.

- `tenancy`: the victims of the tenancy tests, the URL name -> victim-object table, `snapshot()` of tenant data.
- `routes`: every route of the URL conf, the access matrix's `matrix_world` fixture and its URL builders.
- `pages`: the main pages (PAGES), their `pages_world` fixture, and what a page must keep to (CSP, forms).
- `processes`: running manage.py and servers beside the suite: production settings, free ports, `pg_base`.
- `agent_reports`: an independent agent for the signed-report API, and its fixtures (`registered`, `agent`).
- `offer_forms`: the provider's new-offer form.
- `db`: database connections of a thread's own.

tests/conftest.py loads `routes`, `pages` and `processes` as plugins, so their fixtures need no import.
"""
