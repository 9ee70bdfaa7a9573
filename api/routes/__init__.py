"""The API's routers, one module per resource; each route is thin (the work is in tasks/)."""
