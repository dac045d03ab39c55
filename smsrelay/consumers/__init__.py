"""Consuming SMS requests: the worker, its rate limit, retries, providers and dead-lettering."""
