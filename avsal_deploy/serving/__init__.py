"""Serving with Triton Inference Server.

- :mod:`~avsal_deploy.serving.repository`: ``build_repository(export_dir, out_dir, ...)`` writes a
  model repository from an export's manifest (one model per component + ``avsal_pipeline``);
- :mod:`~avsal_deploy.serving.server`: ``TritonServer(repo)`` runs the ``tritonserver`` binary of
  the ``nvidia-pytriton`` wheel (the ``serve`` extra) as a subprocess;
- :mod:`~avsal_deploy.serving.client`: ``open_triton(url)`` gives a ``TritonEngine``, the engine
  protocol over HTTP/gRPC with the DDIM loop on the server (or the client);
- :mod:`~avsal_deploy.serving.triton_models` and :mod:`~avsal_deploy.serving.bls`: the code the
  server runs (imported by the ``model.py`` templates in ``serving/templates/``).

Submodules are not imported here: the python-backend stubs import only what their model needs.
"""
