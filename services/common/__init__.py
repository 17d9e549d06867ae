"""Shared runtime: settings, events, bus, store, HTTP, logging, lifecycle."""
