// The edit-operation contract as the server publishes it: the request body of POST /api/edit_tensor
// in /openapi.json (its pydantic model derives from surgery/ops.py). The editor builds its op list,
// selection modes and per-op parameter fields from this, so a new op on the server needs no change
// here. Fetched once per page.

import { api } from "./api.js";

let cached = null;

export function editSchema() {
  if (!cached) cached = api("/openapi.json").then(parseEditSchema).catch((e) => { cached = null; throw e; });
  return cached;
}

function deref(doc, s) {
  for (let i = 0; s && s.$ref && i < 20; i++) {
    s = s.$ref.replace(/^#\//, "").split("/").reduce((o, k) => o && o[k], doc);
  }
  return s || {};
}

// The non-null alternative of an Optional field (pydantic writes `anyOf: [X, {type: null}]` and
// keeps the field's description and x- annotations beside it).
function unwrap(doc, s) {
  s = deref(doc, s);
  const alts = s.anyOf || s.oneOf;
  if (alts && !s.discriminator) {
    const real = alts.map((a) => deref(doc, a)).filter((a) => a.type !== "null");
    if (real.length === 1) {
      const outer = Object.fromEntries(Object.entries(s).filter(([k]) => k !== "anyOf" && k !== "oneOf"));
      return { ...real[0], ...outer };
    }
  }
  return s;
}

// [{value, description}] of a string enum; meanings from `x-enum-descriptions` ("value: meaning").
function choices(doc, s) {
  s = unwrap(doc, s);
  const values = s.enum || (s.const !== undefined ? [s.const] : []);
  const texts = s["x-enum-descriptions"] || [];
  return values.map((value, i) => ({ value, description: (texts[i] || "").replace(new RegExp(`^${value}: `), "") }));
}

const TARGETS = ["cells", "slice", "select"];

function field(doc, name, s, required) {
  const u = unwrap(doc, s);
  return { name, required, type: u.type || (u.enum ? "string" : "number"), choices: u.enum ? choices(doc, u) : null,
    description: u.description || "", minimum: u.minimum ?? u.exclusiveMinimum, maximum: u.maximum ?? u.exclusiveMaximum,
    default: u.default };
}

// {ops: [{name, description, params: [field], targets: [name]}], selectModes: [{value, description}],
//  selectValue: field}. Each op's parameters come from `x-op-parameters` on the op field
//  ({op: {description, required, optional, targets}}); a server without it gets, per op, the
//  parameters whose description names the op ("scale: the factor").
export function parseEditSchema(doc) {
  const post = doc.paths && doc.paths["/api/edit_tensor"] && doc.paths["/api/edit_tensor"].post;
  const body = post && deref(doc, post.requestBody.content["application/json"].schema);
  if (!body || !body.properties || !body.properties.op) throw new Error("the server's /openapi.json does not describe POST /api/edit_tensor");
  const props = body.properties;
  const opSchema = unwrap(doc, props.op);
  const declared = opSchema["x-op-parameters"] || body["x-op-parameters"] || null;
  const paramNames = Object.keys(props).filter((k) => !["tensor_name", "op", "dry_run", "note", ...TARGETS].includes(k));
  const ops = choices(doc, opSchema).map(({ value: name, description }) => {
    const d = declared && declared[name];
    const required = d ? d.required || [] : [];
    const names = d ? [...required, ...(d.optional || [])]
      : paramNames.filter((k) => new RegExp(`(^|[^a-z_])${name}([^a-z_]|$)`, "i").test(unwrap(doc, props[k]).description || ""));
    return {
      name, description: (d && d.description) || description,
      params: names.filter((k) => props[k]).map((k) => field(doc, k, props[k], required.includes(k))),
      targets: d && d.targets ? d.targets : TARGETS,
    };
  });
  const select = props.select ? unwrap(doc, props.select) : null;
  const sp = (select && select.properties) || {};
  return {
    ops,
    selectModes: sp.mode ? choices(doc, sp.mode) : [],
    selectValue: sp.value ? field(doc, "value", sp.value, true) : null,
  };
}
