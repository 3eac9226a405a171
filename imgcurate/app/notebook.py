"""Rich display of results in Jupyter, registered with IPython by type name.

The objects the I/O layer and the pipeline return (``WriteResult``, ``PipelineResult``) know
nothing of HTML; this registers their HTML renderers (:mod:`imgcurate.app.display`) with the
running IPython shell when ``imgcurate`` is imported there. Registration is by type name, so
nothing is imported until a result is displayed.
"""

from __future__ import annotations

RENDERERS = {
    ("imgcurate.io.writer", "WriteResult"): "write_result_html",
    ("imgcurate.stages.pipeline", "PipelineResult"): "pipeline_result_html",
}


def _renderer(name: str):
    def render(result) -> str:
        from . import display

        return getattr(display, name)(result)

    return render


def register_html_formatters(shell=None) -> bool:
    """Register the renderers with ``shell`` (default: the running IPython shell); False outside IPython."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None:
        return False
    formatter = shell.display_formatter.formatters["text/html"]
    for (module, type_name), renderer in RENDERERS.items():
        formatter.for_type_by_name(module, type_name, _renderer(renderer))
    return True
