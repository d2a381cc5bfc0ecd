"""The API's page-number pagination, with page and page_size read as ASCII digits (accounts/inputs.py), and the
cursor pagination of append-only logs (newest first, stable while new rows arrive)."""

from rest_framework.pagination import CursorPagination, PageNumberPagination

from accounts.inputs import query_int


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_number(self, request, paginator):
        # ASCII digits within an integer (accounts.inputs.query_int), else 400; "last" as in DRF. A page past the
        # end is still DRF's 404.
        if request.query_params.get(self.page_query_param) in self.last_page_strings:
            return paginator.num_pages
        return query_int(request.query_params, self.page_query_param, default=1)

    def get_page_size(self, request):
        wanted = query_int(request.query_params, self.page_size_query_param)
        return self.page_size if wanted is None else min(wanted, self.max_page_size)


class NewestFirstCursor(CursorPagination):
    """Cursor paging over `-id` (an append-only log): `next` and `previous` links carry an opaque cursor, so a page
    never repeats or skips rows that were added meanwhile. page_size as in `Pagination`; a bad cursor is 404."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        wanted = query_int(request.query_params, self.page_size_query_param)
        return self.page_size if wanted is None else max(1, min(wanted, self.max_page_size))
