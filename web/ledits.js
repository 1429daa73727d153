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

/** The summary line's parts: [[text, colour]], in chain order, or the prompt edit / no-concepts line. */
function summaryParts(node) {
  const concepts = chainedConcepts(node);
  if (!concepts.length) {
    const promptEdit = node.graph ? inputNode(node, "prompt_edit") : null;
    const target = promptEdit?.widgets?.find((w) => w.name === "target")?.value;
    return [[promptEdit ? `${uiText("promptEdit")}${target ? `: ${String(target).trim()}` : ""}` : uiText("noConcepts"), "#888"]];
  }
  return concepts.flatMap((c, i) => [...(i ? [[" \u00b7 ", "#888"]] : []),
    [`${conceptName(c)} ${c.scale.toFixed(1)}`, rgb(colourOf(i))]]);
}

const el = (tag, style, text) => Object.assign(document.createElement(tag), { style, textContent: text ?? "" });

/** The widget's element: a summary line (concepts, step n/N) over one thumbnail per concept. It is a DOM
 * widget, so the canvas renderer and Nodes 2.0 (Vue) both show it. */
function liveElement() {
  const root = el("div", "display:flex;flex-direction:column;gap:2px;font:12px Arial,sans-serif;"
    + "overflow:hidden;box-sizing:border-box;padding:0 4px;pointer-events:none");
  root.className = "ledits-live";
  const line = el("div", `display:flex;gap:${GAP}px;height:${LINE}px;line-height:${LINE}px;white-space:nowrap`);
  const summary = el("div", "flex:1;overflow:hidden;text-overflow:ellipsis");
  summary.className = "ledits-summary";
  const progress = el("div", "color:#999");
  progress.className = "ledits-progress";
  const thumbs = el("div", `display:flex;gap:${GAP}px`);
  thumbs.className = "ledits-thumbs";
  line.append(summary, progress);
  root.append(line, thumbs);
  return root;
}

/** Refresh the summary line from the graph (cheap: the DOM is touched only when the text changed). */
function updateSummary(node) {
  const summary = node.leditsView?.querySelector(".ledits-summary");
  if (!summary) return;
  const parts = summaryParts(node);
  const key = JSON.stringify(parts);
  if (summary.dataset.key === key) return;
  summary.dataset.key = key;
  summary.replaceChildren(...parts.map(([text, colour]) => el("span", `color:${colour}`, text)));
  summary.title = parts.map(([text]) => text).join("");
}

function thumbSide(node, n) {
  const width = node.size?.[0] ?? 300;
  return Math.floor(Math.max(16, Math.min(MAX_THUMB, (width - 30 - GAP * (n - 1)) / n)));
}

/** One thumbnail per concept (dark until its first picture arrives); the old ones are removed. */
function buildThumbs(node) {
  const state = node.leditsLive;
  const thumbs = node.leditsView.querySelector(".ledits-thumbs");
  const side = thumbSide(node, state.concepts.length);
  thumbs.replaceChildren(...state.concepts.map((c) => {
    const figure = el("figure", `margin:0;width:${side}px`);
    figure.className = "ledits-thumb";
    c.caption = el("figcaption", `color:${rgb(c.colour)};height:${LINE}px;line-height:${LINE}px;`
      + "white-space:nowrap;overflow:hidden;text-overflow:ellipsis", conceptName(c));
    c.img = el("img", `display:block;box-sizing:border-box;width:${side}px;height:${Math.round(side * state.aspect)}px;`
      + `background:#222;border:2px solid ${rgb(c.colour)};object-fit:fill`);
    c.img.alt = conceptName(c);
    figure.append(c.caption, c.img);
    return figure;
  }));
  fitNode(node);
}

/** The widget's height in the node: the summary line, and the thumbnails when there are some. */
function liveHeight(node) {
  const state = node.leditsLive;
  if (!state?.concepts.length) return LINE + 4;
  return 2 * LINE + Math.round(thumbSide(node, state.concepts.length) * state.aspect) + 8;
}

/** Grow the node (never shrink it) so that the previews fit, in either renderer. */
function fitNode(node) {
  const height = node.computeSize?.()[1];
  if (height && node.size && height > node.size[1]) node.setSize?.([node.size[0], height]);
  redraw(node);
}

function liveWidget(node) {
  node.leditsView = liveElement();
  const widget = node.addDOMWidget(WIDGET, WIDGET, node.leditsView, {
    serialize: false, // not in the queued prompt
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => liveHeight(node),
    getMaxHeight: () => liveHeight(node),
    onDraw: () => updateSummary(node), // the canvas renderer, every frame the node is drawn
  });
  widget.serialize = false; // not in widgets_values
  updateSummary(node);
  return widget;
}

const rootGraph = () => app.rootGraph ?? app.graph;

/** A node by its execution id ("7", or "12:7" inside a subgraph), if it is a LEDITS Sampler. */
function samplerById(id) {
  let graph = rootGraph();
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(part) ?? graph?.getNodeById(Number(part));
    if (!node) return null;
    graph = node.subgraph;
  }
  return classOf(node) === SAMPLER && node.leditsView ? node : null;
}

function redraw(node) {
  node.setDirtyCanvas?.(true, true);
  app.canvas?.setDirty?.(true, true);
}

/** Every LEDITS Sampler of the workflow, subgraphs included. */
function allSamplers(graph = rootGraph(), seen = new Set()) {
  if (!graph || seen.has(graph)) return [];
  seen.add(graph);
  return (graph.nodes ?? []).flatMap((node) => [
    ...(classOf(node) === SAMPLER && node.leditsView ? [node] : []),
    ...(node.subgraph ? allSamplers(node.subgraph, seen) : []),
  ]);
}

function showProgress(node) {
  const state = node.leditsLive;
  node.leditsView.querySelector(".ledits-progress").textContent = state?.total ? `${state.step + 1}/${state.total}` : "";
}

function onStart({ detail }) {
  const node = samplerById(detail.node);
  if (!node) return;
  const concepts = detail.concepts.map((c) => ({ ...c, active: true }));
  node.leditsLive = { step: null, total: null, concepts, aspect: node.leditsLive?.aspect ?? 1 };
  buildThumbs(node);
  showProgress(node);
  updateSummary(node);
}

/** Show a step's picture for one concept once it is decoded (the previous one stays until then: no flicker). */
function showPicture(node, state, slot, step, url) {
  const next = new Image();
  next.onload = () => {
    if (state !== node.leditsLive || step < (slot.shownStep ?? -1)) return; // a newer run or step won
    slot.shownStep = step;
    const aspect = next.naturalHeight / next.naturalWidth;
    slot.img.src = url;
    if (Math.abs(aspect - state.aspect) > 1e-3) {
      state.aspect = aspect; // the thumbnails take the latent's aspect ratio
      for (const c of state.concepts) c.img.style.height = `${Math.round(thumbSide(node, state.concepts.length) * aspect)}px`;
      fitNode(node);
    }
  };
  next.src = url;
}

function onStep({ detail }) {
  const node = samplerById(detail.node);
  if (!node) return;
  if (!node.leditsLive || node.leditsLive.concepts.length !== detail.concepts.length) onStart({ detail });
  const state = node.leditsLive;
  Object.assign(state, { step: detail.step, total: detail.total });
  for (const [i, c] of detail.concepts.entries()) {
    const slot = state.concepts[i];
    Object.assign(slot, { label: c.label, reverse: c.reverse, colour: c.colour, active: c.active });
    slot.img.style.opacity = c.active === false ? "0.4" : "1";
    slot.caption.textContent = conceptName(slot);
    showPicture(node, state, slot, detail.step, c.image);
  }
  showProgress(node);
  updateSummary(node);
}

app.registerExtension({
  name: "ledits_pp.live_previews",
  async setup() {
    api.addEventListener("ledits.start", onStart);
    api.addEventListener("ledits.step", onStep);
    // Nodes 2.0 draws no canvas frames: refresh the summaries whenever the workflow changes.
    api.addEventListener("graphChanged", () => allSamplers().forEach(updateSummary));
    await loadStrings();
  },
  // A loaded workflow's links exist only once the whole graph is configured (and Nodes 2.0 draws no frames).
  afterConfigureGraph() {
    allSamplers().forEach(updateSummary);
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
      liveWidget(this);
      return result;
    };
  },
});
