"""The online side's work, shared by the API: the served champion, the answers (personal,
fold-in, cold start), the given ratings, the answer recorder and the service's telemetry."""
