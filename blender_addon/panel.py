"""The "Gen3D" sidebar tab of the 3D viewport: backend status, inputs, method options and the job list."""

from __future__ import annotations

import bpy

from .jobs import manager, method_kind, method_weights
from .operators import backend_process


class _Gen3DPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Gen3D"


def draw_options(layout, settings, method_name: str) -> None:
    items = [o for o in settings.options if o.method == method_name]
    if not items:
        return
    col = layout.column(align=True)
    row = col.row()
    row.prop(settings, "show_options", icon="TRIA_DOWN" if settings.show_options else "TRIA_RIGHT", emboss=False,
             text=f"Options ({method_name})")
    if settings.show_options:
        for o in items:
            prop = {"INT": "int_value", "FLOAT": "float_value", "BOOL": "bool_value", "STRING": "string_value",
                    "ENUM": "enum_value"}[o.kind]
            col.prop(o, prop, text=o.label)


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
            for line in _wrap(status.error, 48):
                box.label(text=line)
        row = layout.row(align=True)
        row.operator("gen3d.launch_backend", text="Launch", icon="PLAY")
        sub = row.row(align=True)
        sub.enabled = backend_process().started_here or backend_process().read_pid_file() is not None
        sub.operator("gen3d.stop_backend", text="Stop", icon="CANCEL")
        row.operator("gen3d.show_log", text="", icon="TEXT")
        row.operator("gen3d.unload", text="", icon="TRASH")


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
            ready, reason, command = method_weights(m)
            row = col.row(align=True)
            row.enabled = ready
            row.prop_enum(s, "method", m["name"])
            if not ready:
                col.label(text=reason, icon="ERROR")
                if command:
                    r = col.row(align=True)
                    r.label(text=command)
                    r.operator("gen3d.copy_command", text="", icon="COPYDOWN").command = command
        layout.prop(s, "prompt")
        layout.prop(s, "negative_prompt")
        layout.prop(s, "image_source", expand=True)
        if s.image_source == "FILE":
            layout.prop(s, "image_path", text="")
        elif s.image_source == "IMAGE":
            layout.template_ID(s, "image", open="image.open")
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.prop(s, "preset", text="")
        draw_options(layout, s, s.method)
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
            draw_options(box, s, recon)
        box.operator("gen3d.reconstruct", icon="OUTLINER_OB_CAMERA")
        box = layout.box()
        if any(method_kind(m) == "texture" for m in manager.status.methods):
            box.prop(s, "texture_method", text="")
            m = manager.status.method(s.texture_method)
            ready, reason, _ = method_weights(m) if m else (True, "", "")
            if not ready:
                box.label(text=reason, icon="ERROR")
            draw_options(box, s, s.texture_method)
        box.prop(s, "hide_source")
        box.operator("gen3d.refine_texture", icon="TEXTURE")
        layout.operator("gen3d.render_dataset", icon="RENDER_RESULT")


class GEN3D_PT_jobs(_Gen3DPanel, bpy.types.Panel):
    bl_idname = "GEN3D_PT_jobs"
    bl_label = "Jobs"

    def draw(self, context):
        layout = self.layout
        if not manager.records:
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
                for line in _wrap(rec.error, 48):
                    box.label(text=line)
                if rec.error_hint:
                    r = box.row(align=True)
                    r.label(text=rec.error_hint)
                    r.operator("gen3d.copy_command", text="", icon="COPYDOWN").command = rec.error_hint
            else:
                box.label(text=rec.status_text() + (f" · {', '.join(rec.objects)}" if rec.objects else ""))
            img = bpy.data.images.get(rec.preview_image) if rec.preview_image else None
            if img is not None and img.preview is not None:
                box.template_icon(icon_value=img.preview.icon_id, scale=5.0)


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + [line] if line else lines


CLASSES = (GEN3D_PT_backend, GEN3D_PT_generate, GEN3D_PT_scene, GEN3D_PT_jobs)
