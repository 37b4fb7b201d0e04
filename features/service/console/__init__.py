"""The operator's console at ``/console/`` of the feature service (issue 19).

Server-rendered HTML pages (fleet, ingest, consent, features, person) behind a cookie login bound
to an ``admin`` token; plain SVG charts made on the server, one small script, print CSS.

- :mod:`.app`: mounting the console on the service (routes, static files, its connection pool);
- :mod:`.session`: the login cookie and CSRF tokens;
- :mod:`.pages`: the handlers; :mod:`.queries`: every number a page shows, one query each;
- :mod:`.summary`: the summary tables ``python -m features rollup`` refreshes (0065, 0066);
- :mod:`.state`: what the handlers share;
- :mod:`.charts`: the SVG charts; :mod:`.render`: the templates and number formats.

Kept free of imports: ``features rollup`` imports :mod:`.summary` without the web stack.
"""
