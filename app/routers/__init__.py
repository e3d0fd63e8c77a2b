"""HTTP only: parse the request, call the domain, answer."""
