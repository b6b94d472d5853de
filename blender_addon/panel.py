"""The "Gen3D" sidebar tab of the 3D viewport: backend status, inputs, method options and the job list."""

from __future__ import annotations

import bpy

from .jobs import manager, method_inputs, method_kind, method_weights, views_only
from .operators import backend_process, wrap_text
from .tasks import tasks


class _Gen3DPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Gen3D"


def draw_weights(layout, method: dict) -> None:
    """A method's checkpoints that need attention: missing ones with a download button (its licence is shown
    first) and the command, smoke-test (tiny) ones marked as such; nothing when all are installed."""
    for w in method.get("weights") or []:
        if not isinstance(w, dict) or (w.get("ready") is not False and not w.get("tiny")):
            continue
        row = layout.row(align=True)
        if w.get("tiny"):
            row.label(text=f"{w['name']}: smoke-test weights (not a real model)", icon="ERROR")
            continue
        size = f", {w['size_gb']:.1f} GB" if isinstance(w.get("size_gb"), (int, float)) else ""
        row.label(text=f"{w['name']}: missing{size}", icon="ERROR")
        task = next((t for t in tasks.tasks.values() if t.active and t.label == f"download {w['name']}"), None)
        if task is not None:  # downloading: its bar here too
            row.progress(factor=task.fraction or 0.0, type="BAR", text=task.line or "starting")
            continue
        op = row.operator("gen3d.download_weights", text="", icon="IMPORT")
        op.name, op.license, op.restrictive = w["name"], str(w.get("license") or ""), bool(w.get("restrictive"))
        if w.get("command"):
            row.operator("gen3d.copy_command", text="", icon="COPYDOWN").command = w["command"]


def draw_inputs(layout, settings, inputs: set[str], prefix: str) -> None:
    """The prompt and the reference image controls of one section (``prefix`` "" for Generate, "texture_" for
    Refine Texture), only those the method takes (its ``inputs`` in /v1/methods)."""
    if "prompt" in inputs:
        layout.prop(settings, prefix + "prompt")
        layout.prop(settings, prefix + "negative_prompt")
    if "image" in inputs:
        layout.prop(settings, prefix + "image_source", expand=True)
        source = getattr(settings, prefix + "image_source")
        if source == "FILE":
            layout.prop(settings, prefix + "image_path", text="")
        elif source == "IMAGE":
            layout.template_ID(settings, prefix + "image", open="image.open")


VALUE_PROPS = {"INT": "int_value", "FLOAT": "float_value", "BOOL": "bool_value", "STRING": "string_value",
               "ENUM": "enum_value"}


def draw_options(layout, settings, method_name: str, section: str) -> None:
    """The method's main options (``x-main`` in its schema), then the others behind the section's own "Advanced"
    toggle (``section``: generate, reconstruct or texture); a method that marks none shows them all behind it."""
    items = [o for o in settings.options if o.method == method_name]
    if not items:
        return
    col = layout.column(align=True)
    main = [o for o in items if o.main]
    for o in main:
        col.prop(o, VALUE_PROPS[o.kind], text=o.label)
    rest = [o for o in items if not o.main]
    if not rest:
        return
    toggle = f"show_advanced_{section}"
    shown = getattr(settings, toggle)
    col.prop(settings, toggle, icon="TRIA_DOWN" if shown else "TRIA_RIGHT", emboss=False,
             text=f"Advanced ({len(rest)})" if main else f"Options ({len(rest)})")
    if shown:
        for o in rest:
            col.prop(o, VALUE_PROPS[o.kind], text=o.label)


class GEN3D_PT_backend(_Gen3DPanel, bpy.types.Panel):
    bl_idname = "GEN3D_PT_backend"
    bl_label = "Backend"

    def draw(self, context):
        layout, status = self.layout, manager.status
        row = layout.row(align=True)
        if status.online:
            device = status.health.get("device") or ""
            row.label(text=f"Online · v{status.version}" + (f" · {device}" if device else ""), icon="CHECKMARK")
        else:
            row.label(text="Offline" if not status.checked else "Not reachable", icon="ERROR")
        row.operator("gen3d.refresh", text="", icon="FILE_REFRESH")
        if status.error and not status.online:
            box = layout.box()
            for line in wrap_text(status.error, 48):
                box.label(text=line)
        row = layout.row(align=True)
        row.operator("gen3d.launch_backend", text="Launch", icon="PLAY")
        sub = row.row(align=True)
        sub.enabled = backend_process().started_here or backend_process().read_pid_file() is not None
        sub.operator("gen3d.stop_backend", text="Stop", icon="CANCEL")
        row.operator("gen3d.show_log", text="", icon="TEXT")
        row.operator("gen3d.unload", text="", icon="MEMORY")


class GEN3D_PT_generate(_Gen3DPanel, bpy.types.Panel):
    bl_idname = "GEN3D_PT_generate"
    bl_label = "Generate"

    def draw(self, context):
        layout, s = self.layout, context.scene.gen3d
        col = layout.column(align=True)
        methods = [m for m in manager.status.methods if method_kind(m) == "generate"]
        if not methods:
            col.label(text="No generation method (refresh the status)", icon="INFO")
        for m in methods:
            ready = method_weights(m)[0]
            row = col.row(align=True)
            row.enabled = ready
            row.prop_enum(s, "method", m["name"])
            draw_weights(col, m)
        method = manager.status.method(s.method)
        draw_inputs(layout, s, method_inputs(method) if method else set(), "")
        layout.prop(s, "placement", expand=True)
        if s.placement == "CURSOR":
            layout.prop(s, "result_size")
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.prop(s, "preset", text="")
        draw_options(layout, s, s.method, "generate")
        layout.operator("gen3d.generate", icon="SHADERFX")


class GEN3D_PT_scene(_Gen3DPanel, bpy.types.Panel):
    bl_idname = "GEN3D_PT_scene"
    bl_label = "From the Scene"

    def draw(self, context):
        layout, s = self.layout, context.scene.gen3d
        box = layout.box()
        box.prop(s, "views_source", expand=True)
        recon = next((m["name"] for m in manager.status.methods if method_kind(m) == "reconstruct"), None)
        if recon:
            draw_options(box, s, recon, "reconstruct")
        box.operator("gen3d.reconstruct", icon="OUTLINER_OB_CAMERA")
        box = layout.box()
        if any(method_kind(m) == "texture" for m in manager.status.methods):
            box.prop(s, "texture_method", text="")
            m = manager.status.method(s.texture_method)
            if m:
                draw_weights(box, m)
            draw_inputs(box, s, method_inputs(m) if m else set(), "texture_")
            draw_options(box, s, s.texture_method, "texture")
        box.prop(s, "hide_source")
        box.operator("gen3d.refine_texture", icon="TEXTURE")
        layout.operator("gen3d.render_dataset", icon="RENDER_RESULT")


def draw_tasks(layout) -> None:
    """The backend commands the add-on runs (weights downloads, dataset renders): a bar and Cancel while one runs,
    its last line or its error once it ended."""
    for task in reversed(list(tasks.tasks.values())):
        box = layout.box()
        row = box.row(align=True)
        icon = {"succeeded": "CHECKMARK", "failed": "ERROR", "cancelled": "X"}.get(task.state, "TIME")
        row.label(text=task.label, icon=icon)
        row.operator("gen3d.cancel_task" if task.active else "gen3d.remove_task", text="",
                     icon="CANCEL" if task.active else "X").key = task.key
        if task.active:
            box.progress(factor=task.fraction or 0.0, type="BAR", text=task.line or "starting")
        else:
            for line in wrap_text(task.status_text(), 48):
                box.label(text=line)


class GEN3D_PT_jobs(_Gen3DPanel, bpy.types.Panel):
    bl_idname = "GEN3D_PT_jobs"
    bl_label = "Jobs"

    def draw(self, context):
        layout = self.layout
        draw_tasks(layout)
        if not manager.records and not tasks.tasks:
            layout.label(text="No jobs yet")
        for rec in reversed(list(manager.records.values())):
            box = layout.box()
            row = box.row(align=True)
            icon = {"succeeded": "CHECKMARK", "failed": "ERROR", "cancelled": "X"}.get(rec.state, "TIME")
            row.label(text=f"{rec.method} {rec.job_id[:8]}", icon=icon)
            if rec.active:
                row.operator("gen3d.cancel", text="", icon="CANCEL").key = rec.key
            else:
                row.operator("gen3d.remove_job", text="", icon="X").key = rec.key
            if rec.active:
                box.progress(factor=rec.progress, type="BAR", text=rec.status_text())
            elif rec.state == "failed":
                for line in wrap_text(rec.error, 48):
                    box.label(text=line)
                if rec.error_hint:
                    r = box.row(align=True)
                    r.label(text=rec.error_hint)
                    r.operator("gen3d.copy_command", text="", icon="COPYDOWN").command = rec.error_hint
            else:
                box.label(text=rec.status_text() + (f" · {', '.join(rec.objects)}" if rec.objects else ""))
            if rec.resumable and not rec.active:
                box.operator("gen3d.resume_job", icon="PLAY").key = rec.key
            if rec.state == "succeeded" and rec.job_id and views_only(rec.artifacts):
                if not rec.preview_image:
                    box.operator("gen3d.fetch_job", text="Show Views", icon="IMAGE_DATA").key = rec.key
            elif rec.state == "succeeded" and rec.job_id:
                r = box.row(align=True)
                r.operator("gen3d.fetch_job", text="Import Again" if rec.objects else "Import",
                           icon="IMPORT").key = rec.key
                if not rec.preview_image:
                    op = r.operator("gen3d.fetch_job", text="", icon="IMAGE_DATA")
                    op.key, op.preview_only = rec.key, True
            img = bpy.data.images.get(rec.preview_image) if rec.preview_image else None
            if img is not None and img.preview is not None:
                box.template_icon(icon_value=img.preview.icon_id, scale=5.0)


CLASSES = (GEN3D_PT_backend, GEN3D_PT_generate, GEN3D_PT_scene, GEN3D_PT_jobs)
