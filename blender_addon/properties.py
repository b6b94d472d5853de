"""The panel's settings (``scene.gen3d``) and the method options drawn from ``/v1/methods``' JSON schemas.

A method's options become :class:`Gen3DOption` items (one per scalar option; enums, ints, floats, bools, strings).
Each item remembers the value its preset gives it, so only options the user changed are sent as overrides and
the preset still decides the rest.
"""

from __future__ import annotations

import json

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .jobs import manager, method_kind

PRESET_ITEMS = [("fast", "Fast", "Quick preview quality"), ("standard", "Standard", "Balanced"),
                ("high", "High", "Best quality, slowest")]
#: Blender keeps pointers to the strings of dynamic enum items: every list handed out stays alive here, and the
#: same content always gets the same list (cleared at unregister)
_ENUM_CACHE: dict[tuple, list] = {}


def _enum_items(items: list[tuple[str, str, str]]) -> list:
    return _ENUM_CACHE.setdefault(tuple(items), items)


def _method_items(self, context):
    items = [(m["name"], m.get("title") or m["name"], m.get("description") or "")
             for m in manager.status.methods if method_kind(m) == "generate"]
    return _enum_items(items or [("NONE", "(no method)", "Refresh the backend status")])


def _texture_method_items(self, context):
    items = [(m["name"], m.get("title") or m["name"], m.get("description") or "")
             for m in manager.status.methods if method_kind(m) == "texture"]
    return _enum_items(items or [("NONE", "(no texture method)", "The backend offers no texture method")])


def _option_enum_items(self, context):
    values = json.loads(self.choices or "[]")
    return _enum_items([(str(v), str(v), "") for v in values] or [("", "(none)", "")])


def _on_method_or_preset(self, context):
    for name in (self.method, *(m["name"] for m in manager.status.methods if method_kind(m) != "generate")):
        sync_options(self, name)


class Gen3DOption(bpy.types.PropertyGroup):
    method: StringProperty()
    label: StringProperty()
    description: StringProperty()
    kind: EnumProperty(items=[(k, k, "") for k in ("INT", "FLOAT", "BOOL", "STRING", "ENUM")])
    int_value: IntProperty(name="Value")
    float_value: FloatProperty(name="Value", precision=4)
    bool_value: BoolProperty(name="Value")
    string_value: StringProperty(name="Value")
    enum_value: EnumProperty(name="Value", items=_option_enum_items)
    choices: StringProperty(description="JSON list of allowed values (ENUM)")
    main: BoolProperty(description="one of the method's main options (x-main); the others are 'Advanced'")
    default: StringProperty(description="JSON of the value the control had from the preset")

    @property
    def value(self):
        return {"INT": lambda: self.int_value, "FLOAT": lambda: self.float_value, "BOOL": lambda: self.bool_value,
                "STRING": lambda: self.string_value, "ENUM": lambda: self._enum()}[self.kind]()

    def _enum(self):
        for v in json.loads(self.choices or "[]"):
            if str(v) == self.enum_value:
                return v
        return self.enum_value

    def set_value(self, v) -> None:
        if self.kind == "INT":
            self.int_value = int(v)
        elif self.kind == "FLOAT":
            self.float_value = float(v)
        elif self.kind == "BOOL":
            self.bool_value = bool(v)
        elif self.kind == "ENUM":
            self.enum_value = str(v)
        else:
            self.string_value = "" if v is None else str(v)

    def changed(self) -> bool:
        default = json.loads(self.default) if self.default else None
        v = self.value
        if self.kind == "FLOAT" and isinstance(default, (int, float)):
            return abs(v - default) > 1e-6 * max(1.0, abs(default))
        return v != default


class Gen3DSettings(bpy.types.PropertyGroup):
    method: EnumProperty(name="Method", items=_method_items, update=_on_method_or_preset,
                         description="Generation method (from the backend's /v1/methods)")
    prompt: StringProperty(name="Prompt", description="What to generate")
    negative_prompt: StringProperty(name="Negative", description="What to avoid")
    image_source: EnumProperty(name="Reference", items=[("NONE", "None", "No reference image"),
                                                       ("FILE", "File", "An image file"),
                                                       ("IMAGE", "Image", "An image datablock of this file")])
    image_path: StringProperty(name="Image File", subtype="FILE_PATH")
    image: PointerProperty(name="Image", type=bpy.types.Image)
    placement: EnumProperty(name="Place", default="CURSOR", items=[
        ("CURSOR", "3D Cursor", "Put the result at the 3D cursor, scaled to the chosen size"),
        ("CAMERA", "Through Active Camera", "Put the result where the active camera sees the reference image, at "
                                            "the size that makes it look as in the image")])
    result_size: FloatProperty(name="Size", default=1.0, min=0.0, soft_max=10.0, subtype="DISTANCE",
                               description="Largest dimension of a result placed at the 3D cursor (0: the method's "
                                           "own size)")
    seed: IntProperty(name="Seed", min=0, default=0)
    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default="standard", update=_on_method_or_preset)
    options: CollectionProperty(type=Gen3DOption)
    show_advanced_generate: BoolProperty(name="Advanced", default=False, description="Show every option")
    show_advanced_reconstruct: BoolProperty(name="Advanced", default=False, description="Show every option")
    show_advanced_texture: BoolProperty(name="Advanced", default=False, description="Show every option")
    views_source: EnumProperty(name="Views", items=[
        ("RENDER", "Render Scene", "Render the scene from each camera with a transparent background"),
        ("IMAGES", "Camera Images", "Use each camera's background image")], default="RENDER")
    texture_method: EnumProperty(name="Texture Method", items=_texture_method_items,
                                 description="Method that re-textures the selected mesh")
    # Refine Texture's own inputs, apart from Generate's
    texture_prompt: StringProperty(name="Prompt", description="What the new texture should show")
    texture_negative_prompt: StringProperty(name="Negative", description="What the texture should avoid")
    texture_image_source: EnumProperty(name="Reference", items=[
        ("NONE", "None", "No reference image"), ("FILE", "File", "An image file"),
        ("IMAGE", "Image", "An image datablock of this file")],
        description="A reference image of the object, taken through the active camera")
    texture_image_path: StringProperty(name="Image File", subtype="FILE_PATH")
    texture_image: PointerProperty(name="Image", type=bpy.types.Image)
    hide_source: BoolProperty(name="Hide Original", default=True,
                              description="Hide the source mesh once the refined one is imported")


def _schema_props(schema: dict) -> dict:
    return (schema or {}).get("properties") or {}


def _resolve(prop: dict, schema: dict) -> dict:
    """Follow a ``$ref`` and collapse ``anyOf [X, null]`` (pydantic's Optional) to X."""
    if "$ref" in prop:
        ref = prop["$ref"].rsplit("/", 1)[-1]
        prop = {**(schema.get("$defs") or schema.get("definitions") or {}).get(ref, {}), **{
            k: v for k, v in prop.items() if k != "$ref"}}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in prop:
            alts = [a for a in prop[key] if a.get("type") != "null"]
            if len(alts) == 1:
                prop = {**_resolve(alts[0], schema), **{k: v for k, v in prop.items() if k != key}}
    return prop


def _kind(prop: dict) -> str | None:
    if "enum" in prop:
        return "ENUM"
    return {"integer": "INT", "number": "FLOAT", "boolean": "BOOL", "string": "STRING"}.get(prop.get("type"))


def method_schema(method: dict) -> dict:
    return method.get("options_schema") or method.get("schema") or method.get("options") or {}


def sync_options(settings: Gen3DSettings, method_name: str) -> None:
    """(Re)build the option items of ``method_name`` for the current preset, keeping values the user changed."""
    method = manager.status.method(method_name)
    if method is None:
        return
    schema = method_schema(method)
    preset = (method.get("presets") or {}).get(settings.preset) or {}
    props = {k: _resolve(v, schema) for k, v in _schema_props(schema).items()}
    kept = {o.name: o.value for o in settings.options if o.method == method_name and o.changed()}
    for i in reversed(range(len(settings.options))):
        if settings.options[i].method == method_name:
            settings.options.remove(i)
    for name, prop in props.items():
        kind = _kind(prop)
        if kind is None:
            continue
        default = preset.get(name, prop.get("default"))
        item = settings.options.add()
        item.name, item.method, item.kind = name, method_name, kind
        item.label = prop.get("title") or name.replace("_", " ").capitalize()
        item.description = prop.get("description") or ""
        item.choices = json.dumps(prop.get("enum", []))
        item.main = bool(prop.get("x-main"))
        if default is not None:
            item.set_value(default)
        # what the control shows before the user touches it (an unset optional shows 0 / "" and is not sent)
        item.default = json.dumps(item.value)
        if name in kept:
            item.set_value(kept[name])


def sync_all(scene) -> None:
    """Rebuild every method's option items (after the method list changed)."""
    settings = scene.gen3d
    for m in manager.status.methods:
        sync_options(settings, m["name"])


def option_overrides(settings: Gen3DSettings, method_name: str) -> dict:
    """Options of ``method_name`` that differ from what the preset gives."""
    return {o.name: o.value for o in settings.options if o.method == method_name and o.changed()}


CLASSES = (Gen3DOption, Gen3DSettings)


def register() -> None:
    bpy.types.Scene.gen3d = PointerProperty(type=Gen3DSettings)


def unregister() -> None:
    del bpy.types.Scene.gen3d
    _ENUM_CACHE.clear()
