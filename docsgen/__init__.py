"""The documentation site's generated reference pages.

Theory of operation
===================

The reference parts of the docs site (configuration keys, the control API,
metrics, log events, the command line) are not written by hand: they are
rendered from the code at every ``mkdocs build``, so they cannot drift from
it.  Each module here turns one source of truth into Markdown:

==================  ==========================================================
module              source
==================  ==========================================================
``config_ref``      the pydantic models of ``adapters.service.config`` (keys,
                    types, defaults, validation rules, attribute docstrings)
                    and its secret environment variables
``api_ref``         the FastAPI app's OpenAPI schema, the roles its routes
                    require and the error codes the API and engine raise
``metrics_ref``     the Prometheus registry of ``adapters.service.metrics``
``logs_ref``        the log calls in ``adapters/`` (read from the source)
``cli_ref``         the ``xferd`` argument parser
==================  ==========================================================

``docsgen/pages.py`` is the script ``mkdocs-gen-files`` runs (see
``mkdocs.yml``): it writes the pages under ``reference/`` into the build
only, never into ``docs/``.  Nothing here touches the network or a PBX: the
API schema comes from an app built around an in-memory store and offline
adapters.

This package is a build tool: it is not part of the installed wheel.
"""
