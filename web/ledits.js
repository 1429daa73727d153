// LEDITS++ in the ComfyUI frontend: on the LEDITS Sampler node, a one-line summary of the chained
// concepts and, while it runs, one live preview per concept (its current mask in its colour over the
// latent preview). The previews come from nodes/live_preview.py ("ledits.start", "ledits.step"); they
// stay after the run and are cleared when the next run starts.
// A LEDITS Inversion node added by hand starts with its seed fixed ("invert once, edit many").
// Our strings are in locales/<lang>/main.json under "ledits" (served by the host at /i18n).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SAMPLER = "LeditsSampler";
const CONCEPT = "LeditsConceptEdit";
const INVERSION = "LeditsInversion";
const WIDGET = "ledits_live";

// The same colours, in the same order, as CONCEPT_COLOURS in nodes/objects.py (a test checks).
const CONCEPT_COLOURS = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
  [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
];

const PAD = 10;
const GAP = 6;
const LINE = 16;
const MAX_THUMB = 128;
const MODE_ALWAYS = 0;

// Our own UI strings, English until the host's /i18n answers; then in the frontend's language.
const STRINGS = { en: { noConcepts: "no concepts: reconstructs the photo", promptEdit: "prompt edit" } };

function uiText(key) {
  const locale = app.extensionManager?.setting?.get?.("Comfy.Locale") ?? "en";
  return STRINGS[locale]?.[key] ?? STRINGS[locale.split("-")[0]]?.[key] ?? STRINGS.en[key];
}

async function loadStrings() {
  try {
    for (const [locale, messages] of Object.entries(await api.getCustomNodesI18n())) {
      if (messages?.ledits) STRINGS[locale] = { ...STRINGS[locale], ...messages.ledits };
    }
  } catch (error) {
    console.warn("LEDITS++: could not load translations", error);
  }
}

/** A fresh LEDITS Inversion keeps its seed: the frontend starts any seed control at "randomize", which
 * would re-invert the photo on every run. Saved workflows are not affected: configure() runs after
 * this and restores the saved mode. */
function fixSeedControl(node) {
  const seed = node.widgets?.find((w) => w.name === "seed");
  const control = seed?.linkedWidgets?.find((w) => w.name === "control_after_generate")
    ?? node.widgets?.find((w) => w.name === "control_after_generate");
  if (control) control.value = "fixed";
}

const fontSize = () => Math.min(12, globalThis.LiteGraph?.NODE_SUBTEXT_SIZE ?? 12);
const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
const colourOf = (index) => CONCEPT_COLOURS[index % CONCEPT_COLOURS.length];
const classOf = (node) => node?.comfyClass ?? node?.type;

function inputNode(node, name) {
  const index = node.inputs?.findIndex((input) => input.name === name) ?? -1;
  return index < 0 ? null : node.getInputNode(index);
}

/** The concepts feeding a sampler, in chain order: [{text, reverse, scale}] (bypassed ones left out). */
function chainedConcepts(sampler) {
  const found = [];
  const seen = new Set();
  let node = sampler.graph ? inputNode(sampler, "concepts") : null;
  while (node && !seen.has(node.id)) {
    seen.add(node.id);
    if (classOf(node) === CONCEPT) {
      if (node.mode === MODE_ALWAYS) {
        const value = (name) => node.widgets?.find((w) => w.name === name)?.value;
        found.push({ text: String(value("text") ?? "").trim(), reverse: !!value("reverse"), scale: Number(value("scale") ?? 0) });
      }
      node = inputNode(node, "previous");
    } else if (classOf(node) === "Reroute") {
      node = node.getInputNode(0);
    } else {
      break;
    }
  }
  return found.reverse();
}

const conceptName = (c) => `${c.reverse ? "\u2212" : "+"}${c.label ?? c.text}`;

/** Thumbnail layout for the node's current previews, or null when there are none. */
function thumbLayout(node, width) {
  const concepts = node.leditsLive?.concepts ?? [];
  if (!concepts.length) return null;
  const n = concepts.length;
  const side = Math.max(16, Math.min(MAX_THUMB, (width - 2 * PAD - GAP * (n - 1)) / n));
  return { side, height: side * (node.leditsLive.aspect ?? 1) };
}

function widgetHeight(node, width) {
  const thumbs = thumbLayout(node, width);
  return LINE + (thumbs ? LINE + thumbs.height + 4 : 0);
}

function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "\u2026").width > maxWidth) cut = cut.slice(0, -1);
  return cut + "\u2026";
}

function drawSummary(ctx, node, width, y) {
  const state = node.leditsLive;
  const midY = y + LINE / 2;
  let right = width - PAD;
  if (state?.total) {
    ctx.textAlign = "right";
    ctx.fillStyle = "#999";
    const text = `${state.step + 1}/${state.total}`;
    ctx.fillText(text, right, midY);
    right -= ctx.measureText(text).width + GAP;
  }
  ctx.textAlign = "left";
  const concepts = chainedConcepts(node);
  if (!concepts.length) {
    ctx.fillStyle = "#888";
    const promptEdit = node.graph ? inputNode(node, "prompt_edit") : null;
    const target = promptEdit?.widgets?.find((w) => w.name === "target")?.value;
    const line = promptEdit ? `${uiText("promptEdit")}${target ? `: ${String(target).trim()}` : ""}` : uiText("noConcepts");
    ctx.fillText(fitText(ctx, line, right - PAD), PAD, midY);
    return;
  }
  let x = PAD;
  for (const [i, c] of concepts.entries()) {
    const parts = [[" \u00b7 ", "#888"], [`${conceptName(c)} ${c.scale.toFixed(1)}`, rgb(colourOf(i))]];
    for (const [text, colour] of i ? parts : parts.slice(1)) {
      const fitted = fitText(ctx, text, right - x);
      ctx.fillStyle = colour;
      ctx.fillText(fitted, x, midY);
      x += ctx.measureText(fitted).width;
      if (fitted !== text) return;
    }
  }
}

function drawThumbs(ctx, node, width, y) {
  const state = node.leditsLive;
  const layout = thumbLayout(node, width);
  if (!layout) return;
  let drawn = 0;
  for (const [i, c] of state.concepts.entries()) {
    const x = PAD + i * (layout.side + GAP);
    ctx.fillStyle = rgb(c.colour);
    ctx.textAlign = "left";
    ctx.fillText(fitText(ctx, conceptName(c), layout.side), x, y + LINE / 2);
    const top = y + LINE;
    if (c.img?.complete && c.img.naturalWidth) {
      ctx.drawImage(c.img, x, top, layout.side, layout.height);
      drawn += 1;
    } else {
      ctx.fillStyle = "#222";
      ctx.fillRect(x, top, layout.side, layout.height);
    }
    ctx.strokeStyle = rgb(c.colour);
    ctx.lineWidth = c.active === false ? 1 : 2;
    ctx.globalAlpha = c.active === false ? 0.4 : 1;
    ctx.strokeRect(x, top, layout.side, layout.height);
    ctx.globalAlpha = 1;
  }
  if (drawn) state.drawnImages = drawn;
}

function liveWidget(node) {
  return {
    name: WIDGET,
    type: WIDGET,
    value: null,
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not in the queued prompt
    computeSize(width) {
      const w = width ?? node.size[0];
      return [w, widgetHeight(node, w)];
    },
    draw(ctx, drawnNode, width, y) {
      ctx.save();
      ctx.font = `${fontSize()}px Arial`;
      ctx.textBaseline = "middle";
      drawSummary(ctx, drawnNode, width, y);
      drawThumbs(ctx, drawnNode, width, y + LINE);
      ctx.restore();
    },
  };
}

/** A node by its execution id ("7", or "12:7" inside a subgraph), if it is a LEDITS Sampler. */
function samplerById(id) {
  let graph = app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(part) ?? graph?.getNodeById(Number(part));
    if (!node) return null;
    graph = node.subgraph;
  }
  return classOf(node) === SAMPLER ? node : null;
}

function redraw(node) {
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas(true, true);
}

function onStart({ detail }) {
  const node = samplerById(detail.node);
  if (!node) return;
  const concepts = detail.concepts.map((c) => ({ ...c, active: true, img: null }));
  node.leditsLive = { step: null, total: null, concepts, received: 0, drawnImages: 0, aspect: 1 };
  redraw(node);
}

function onStep({ detail }) {
  const node = samplerById(detail.node);
  if (!node) return;
  if (!node.leditsLive || node.leditsLive.concepts.length !== detail.concepts.length) {
    onStart({ detail });
  }
  const state = node.leditsLive;
  state.step = detail.step;
  state.total = detail.total;
  state.received += 1;
  for (const [i, c] of detail.concepts.entries()) {
    const slot = state.concepts[i];
    Object.assign(slot, { label: c.label, reverse: c.reverse, colour: c.colour, active: c.active });
    const img = new Image();
    const step = detail.step;
    img.onload = () => {
      if (state !== node.leditsLive || step < (slot.shownStep ?? -1)) return; // a newer run or step won
      slot.img = img; // the previous image stays until this one is ready: no flicker
      slot.shownStep = step;
      state.aspect = img.naturalHeight / img.naturalWidth;
      redraw(node);
    };
    img.src = c.image;
  }
  redraw(node);
}

app.registerExtension({
  name: "ledits_pp.live_previews",
  async setup() {
    api.addEventListener("ledits.start", onStart);
    api.addEventListener("ledits.step", onStep);
    await loadStrings();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === INVERSION) {
      const onInversionCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onInversionCreated?.apply(this, arguments);
        fixSeedControl(this);
        return result;
      };
      return;
    }
    if (nodeData.name !== SAMPLER) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    /** "+sunglasses 6.0 · −beard 4.0": the concepts chained into this sampler, in order. */
    nodeType.prototype.leditsConceptSummary = function () {
      return chainedConcepts(this).map((c) => `${conceptName(c)} ${c.scale.toFixed(1)}`).join(" \u00b7 ");
    };
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.addCustomWidget(liveWidget(this));
      return result;
    };
  },
});
