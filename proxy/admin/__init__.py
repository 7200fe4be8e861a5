"""The admin side of the proxy's port: `auth` (the one admin check), `api` (the cutover
routes under `/admin/`), `views` (their JSON), `dashboard` (`/metrics`, the report and its
page). Control plane only: the request path never imports this package."""
