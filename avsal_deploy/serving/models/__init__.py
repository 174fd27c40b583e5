"""The models Triton runs: one module per model, behind the thin ``model.py`` templates in
``serving/templates/`` (each template imports its class as ``TritonPythonModel``).

- :mod:`~avsal_deploy.serving.models.component`: one exported component (``avsal_<component>``);
- :mod:`~avsal_deploy.serving.models.pipeline`: a batch of windows (``avsal_pipeline``);
- :mod:`~avsal_deploy.serving.models.stream`: live frames in, maps out (``avsal_stream``);
- :mod:`~avsal_deploy.serving.models.video`: a whole encoded file (``avsal_video``).

These modules are imported inside Triton's python-backend stub, whose interpreter is the venv's
Python (the stub finds it on ``PATH``), so ``import avsal_deploy`` works there. The module
``triton_python_backend_utils`` only exists inside the stub: it is imported in the methods that
use it. No model imports torch (every stub is its own process; the runtime is torch-free). Every
model has Triton's three methods: ``initialize``, ``execute`` and ``finalize`` (which releases its
sessions, engine and streams when Triton unloads the model). Names, shapes, parameters and the
error responses are those of :mod:`avsal_deploy.serving.contract`.

Submodules are not imported here: a stub imports only what its model needs.
"""
