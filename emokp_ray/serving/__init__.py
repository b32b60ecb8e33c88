"""The Ray Serve application: app.py (ingress, builder), model.py (model deployment), http_input.py, schemas.py, batching.py, run.py."""
