"""The xferd service: config, store, runtime, control API, logging, metrics and the demo.

Modules are imported on demand (``adapters.service.server.Service`` assembles
them) so that ``xferd run`` can report a config error before loading the web stack.
"""
