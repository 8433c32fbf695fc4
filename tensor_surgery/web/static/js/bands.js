// Layer bands named as a reader would, the same on the canvas (its layer labels and hover) and in
// Focus: "embed" for what comes before the layers, L0..Ln, "norm" / "head" for what comes after
// them. A band is one (block, layer_index) of the server's grid; the server puts tensors outside
// the numbered layers (no "*" in their type key) after the last layer (layer_index = the number of
// layers) or before the first (-1).

// {kind: "pre" | "layer" | "post", label, where} of one band. `groups`: the type groups of its
// tensors; `loose`: none of them has a "*" in its type key; `last`: its layer is its block's last.
export function nameBand({ block = "", layer, groups, loose, last }) {
  const prefix = block ? `${block.slice(0, 3)} ` : "";
  if (layer < 0) {
    return { kind: "pre", label: prefix + (groups.has("embedding") ? "embed" : "pre"), where: "before the layers" };
  }
  if (loose && last) {
    const all = [...groups];
    const label = groups.has("output_head") ? "head" : all.every((g) => g === "norm") ? "norm" : "out";
    return { kind: "post", label: prefix + label, where: "after the layers" };
  }
  return { kind: "layer", label: `${prefix}L${layer}`, where: `layer ${layer}` };
}

const isLoose = (m) => !(m.specific_type_key || "").includes("*");
const keyOf = (m) => `${m.block || ""}|${m.layer_index}`;

const cache = new WeakMap(); // tensors listing -> Map band key -> name

function bandsOf(tensors) {
  let names = cache.get(tensors);
  if (names) return names;
  const bands = new Map();
  const lastLayer = new Map();
  for (const t of tensors) {
    const m = t.metadata_for_canvas;
    const key = keyOf(m);
    let b = bands.get(key);
    if (!b) bands.set(key, (b = { block: m.block || "", layer: m.layer_index, groups: new Set(), loose: true }));
    b.groups.add(m.type_group);
    b.loose = b.loose && isLoose(m);
    lastLayer.set(b.block, Math.max(lastLayer.get(b.block) ?? -Infinity, b.layer));
  }
  names = new Map([...bands].map(([key, b]) => [key, nameBand({ ...b, last: b.layer === lastLayer.get(b.block) })]));
  cache.set(tensors, names);
  return names;
}

// The band of tensor `t` in the listing `tensors` (state.tensors): {kind, label, where}.
export function bandOf(t, tensors) {
  return bandsOf(tensors).get(keyOf(t.metadata_for_canvas))
    || nameBand({ block: t.metadata_for_canvas.block, layer: t.metadata_for_canvas.layer_index, groups: new Set(), loose: false, last: false });
}
