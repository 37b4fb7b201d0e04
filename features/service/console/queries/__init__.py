"""Every number a console page shows, one SQL query each (issue 19's rule: a test checks each
against the database directly). One module per page; each function takes a connection and
returns plain data for the page's template. Nothing here writes."""
