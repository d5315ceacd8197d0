"""The registry page and its JSON API: the FastAPI app that the plugin mounts on the api-server.

Imported only where the app is served (``plugin.py`` builds it on first access of
``fastapi_apps``, which only the api-server and ``airflow plugins`` do): schedulers, workers and the
DAG processor load the plugin without FastAPI, the catalog, git or DVC.
"""
