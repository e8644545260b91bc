"""The web pages: the execution list, the live execution page and the run form.

Django templates (`templates/`) and plain JavaScript (`executions/static/tailgate/`) over the
REST API and the streams; the pages read through `rbac.access` like every other view.
"""
