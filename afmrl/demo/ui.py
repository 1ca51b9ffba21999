"""The Gradio app over a :class:`~afmrl.demo.service.DemoService`: a Search tab and a Compare tab.

Everything the app shows comes from the service; this module only lays it out and turns problems
into messages: a :class:`~afmrl.errors.UserError` (a non-image upload, a file over the limit,
unreadable attributes) becomes a ``gr.Error`` with that sentence, and an unexpected exception is
logged on the server and shown as one line, never as a stack trace.

It lives in the package (not in ``app.py``) so that ``afmrl demo`` works from an installed package;
``app.py`` is the Space's entry point and calls the same command.

Serving (:func:`launch`): a queue shared by both tabs (``concurrency_id="model"``) with a
concurrency limit and a maximum size, Gradio's upload size limit, analytics off, and the loopback
address unless told otherwise. Photos of the results are served from the gallery cache folder
only (``allowed_paths``).
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # after the analytics switch

from afmrl.errors import UserError, one_line

from .service import MAX_K, DemoService, Listing

logger = logging.getLogger(__name__)

TITLE = "AFMRL: find the identical product"
WHY_HEADERS = [
    "rank",
    "title",
    "score",
    "P(identical)",
    "identical?",
    "agree",
    "differ (query ≠ listing)",
    "not stated by the listing",
]
DIFF_HEADERS = ["attribute", "listing A", "listing B", ""]
ATTRIBUTE_INFO = (
    "Filled from the photo and title when empty. Fix a wrong one (key: value; key: value) and "
    "search again; clear it to extract again."
)


def photo_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` that hands the upload over as an unopened file path.

    ``gr.Image`` decodes an upload before the event function runs, so a non-image ends in a raw
    PIL exception. Here every check (type, size, pixels, downscaling) happens in
    :func:`afmrl.demo.images.read_photo`, which explains a refusal in one sentence. The instance's
    ``preprocess`` is replaced rather than subclassing ``gr.Image``: Gradio writes a ``.pyi`` stub
    beside the source file of every component subclass, i.e. into this package.
    """
    image = gr.Image(type="filepath", **kwargs)
    parent = image.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.path is None:  # a data: URL (a pasted image)
            return parent(payload)
        return str(payload.path)

    image.preprocess = preprocess
    return image


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an event function; problems become a one-line ``gr.Error`` in the UI."""

    @functools.wraps(fn)  # keeps the parameter names the API page shows
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except UserError as err:
            raise gr.Error(one_line(err, limit=300), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as err:  # a bug: keep the trace in the server log, not in the UI
            logger.error("demo: %s", traceback.format_exc())
            raise gr.Error(
                f"Something went wrong on the server ({one_line(err, limit=160)}); it was logged.",
                print_exception=False,
            ) from None

    return wrapper


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _notes(notes: list[str]) -> str:
    return "\n".join(f"- {n}" for n in notes)


def build_app(service: DemoService, title: str = TITLE) -> gr.Blocks:
    """The two-tab Blocks app over ``service`` (not launched)."""
    calibration = service.calibration

    def search(photo: str | None, title: str, attributes: str, k: float):
        result = service.search(photo, title, attributes, int(k))
        gallery, why = [], []
        for c in result.candidates:
            mark = "" if c.identical is None else (" · ✓ identical" if c.identical else "")
            caption = f"#{c.rank} · {c.score:.3f}" + (
                f" · P={c.probability:.2f}" if c.probability is not None else ""
            )
            gallery.append((c.photo, caption + mark))
            differ = ", ".join(f"{k}: {a} ≠ {b}" for k, (a, b) in c.diff.differ.items())
            why.append(
                [
                    c.rank,
                    c.title,
                    round(c.score, 3),
                    _fmt(c.probability, 2),
                    "—" if c.identical is None else ("yes" if c.identical else "no"),
                    ", ".join(c.diff.agree) or "—",
                    differ or "—",
                    ", ".join(c.diff.only_left) if c.attributes else "(no attributes)",
                ]
            )
        source = {
            "extracted": "extracted from the photo and title",
            "given": "as you typed them",
            "none": "none",
        }[result.attributes_source]
        status = f"**Query attributes** ({source}): `{result.attributes or '—'}`"
        if calibration is not None:
            status += (
                f"  \n'Identical' when P ≥ {calibration.threshold:.2f} (calibrated on the "
                "validation split)."
            )
        if result.notes:
            status += "\n\n" + _notes(result.notes)
        return result.attributes, gallery, why, status

    def compare(a_photo, a_title, a_attrs, b_photo, b_title, b_attrs):
        result = service.compare(
            Listing(a_photo, a_title, a_attrs), Listing(b_photo, b_title, b_attrs)
        )
        if result.identical is None:
            verdict = f"### Cosine similarity {result.score:.3f}"
        else:
            word = "Identical product" if result.identical else "Not the same product"
            verdict = (
                f"### {word}: P(identical) = {result.probability:.2f}\n"
                f"cosine {result.score:.3f}; threshold P ≥ {calibration.threshold:.2f} "
                "(calibrated on the validation split)"
            )
        if result.notes:
            verdict += "\n\n" + _notes(result.notes)
        rows = [list(r) for r in result.diff.rows()]
        return result.attributes[0], result.attributes[1], verdict, rows

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {title}\nFind the *same* product among near-identical ones (another colour, "
            "neckline or pack size is a different product). The model extracts the listing's "
            "attributes; fix one if it is wrong and search again."
        )
        if service.notes:
            gr.Markdown(_notes(service.notes))
        with gr.Tab("Search"):
            with gr.Row():
                with gr.Column(scale=1):
                    photo = photo_input(
                        label="Photo",
                        sources=["upload", "clipboard"],
                        height=260,
                        elem_id="query-photo",
                    )
                    title_box = gr.Textbox(label="Title (optional)", elem_id="query-title")
                    attrs = gr.Textbox(
                        label="Attributes", info=ATTRIBUTE_INFO, elem_id="query-attributes"
                    )
                    k = gr.Slider(
                        1,
                        min(MAX_K, service.gallery.index.count),
                        value=min(5, service.gallery.index.count),
                        step=1,
                        label="Results",
                    )
                    button = gr.Button("Search", variant="primary", elem_id="search-button")
                    if service.gallery.examples:
                        gr.Examples(
                            [list(e) for e in service.gallery.examples],
                            [photo, title_box],
                            label="Gallery photos",
                            cache_examples=False,
                        )
                with gr.Column(scale=2):
                    status = gr.Markdown(elem_id="search-status")
                    results = gr.Gallery(
                        label="Candidates",
                        columns=5,
                        height=240,
                        object_fit="contain",
                        elem_id="results",
                    )
                    why = gr.Dataframe(
                        headers=WHY_HEADERS,
                        label="Why: attributes that agree and differ",
                        interactive=False,
                        wrap=True,
                        column_widths=["5%", "25%", "7%", "8%", "8%", "15%", "19%", "13%"],
                        elem_id="why",
                    )
            for box in (photo, title_box):  # a new listing gets its attributes extracted again
                box.change(lambda: "", None, attrs, queue=False, api_visibility="private")
            button.click(
                _guarded(search),
                [photo, title_box, attrs, k],
                [attrs, results, why, status],
                api_name="search",
                concurrency_id="model",
            )
        with gr.Tab("Compare"):
            sides = []
            with gr.Row():
                for name in ("A", "B"):
                    with gr.Column():
                        sides.append(
                            (
                                photo_input(
                                    label=f"Listing {name}: photo",
                                    sources=["upload", "clipboard"],
                                    height=220,
                                ),
                                gr.Textbox(label=f"Listing {name}: title"),
                                gr.Textbox(
                                    label=f"Listing {name}: attributes",
                                    info="Extracted when empty; edit to fix.",
                                ),
                            )
                        )
            compare_button = gr.Button("Compare", variant="primary")
            verdict = gr.Markdown()
            diff = gr.Dataframe(headers=DIFF_HEADERS, label="Attributes", interactive=False)
            (a_photo, a_title, a_attrs), (b_photo, b_title, b_attrs) = sides
            for box, target in (
                (a_photo, a_attrs),
                (a_title, a_attrs),
                (b_photo, b_attrs),
                (b_title, b_attrs),
            ):
                box.change(lambda: "", None, target, queue=False, api_visibility="private")
            compare_button.click(
                _guarded(compare),
                [a_photo, a_title, a_attrs, b_photo, b_title, b_attrs],
                [a_attrs, b_attrs, verdict, diff],
                api_name="compare",
                concurrency_id="model",
            )
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    concurrency: int = 1,
    queue_size: int = 64,
    max_file_mb: float = 10,
    allowed_paths: list[str | os.PathLike] = (),
    block: bool = True,
) -> str:
    """Queue and serve ``app``; returns its local URL (blocks until Ctrl-C when ``block``)."""
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{int(max_file_mb * 1024)}kb",
        allowed_paths=[str(Path(p)) for p in allowed_paths],
        show_error=False,
        share=False,
        inbrowser=False,
        quiet=True,
        prevent_thread_lock=True,
        ssr_mode=False,
    )
    url = app.local_url
    print(f"[demo] running on {url} (Ctrl-C stops it)", flush=True)
    if block:
        app.block_thread()
    return url


__all__ = ["build_app", "launch", "photo_input"]
