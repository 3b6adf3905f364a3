// threadline's Markdown rendering for the chat page: one ES module (no build step), served at
// /v1/markdown.js (with `threadline serve --demo`) beside the libraries it vendors (VENDORED.md):
// marked (GitHub-flavoured Markdown), DOMPurify (sanitizing) and highlight.js (code).
//
//   import { renderMarkdown, createRenderer } from "/v1/markdown.js";
//   container.classList.add("markdown");            // the styles of markdown.css apply under it
//   container.replaceChildren(renderMarkdown(text)); // a finished answer
//   const r = createRenderer(answerElement);        // a streaming one (adds class "markdown")
//   r.update(textSoFar);                            // after each piece: re-rendered once a frame
//   r.flush();                                      // at the end: render now
//
// Safety: no HTML in the text ever reaches the DOM as HTML. Raw HTML (block or inline) is shown
// as text; the HTML marked makes goes through DOMPurify with an allowlist of the tags and
// attributes Markdown produces (no style, no on*, no src: images are never loaded, they are
// shown as links, class "md-image"). Links keep only absolute http(s) and mailto URLs (others
// become their text) and open in a new tab (target="_blank" rel="noopener noreferrer").
//
// Styles: the module links /v1/markdown.css once (the first <link> of <head>, so the page's own
// stylesheets come after it); its rules are all in :where(), so any rule of the page wins. They
// apply under class "markdown", in light and dark (prefers-color-scheme), and set white-space:
// normal on the blocks (so a container with pre-wrap, as a plain-text answer has, is fine; the
// newlines between top-level blocks are not in the DOM). Markup to style:
//   div.md-code > (div.md-code-head > span.md-code-lang + button.copy[type=button]) + pre > code.hljs
//     (a fenced or indented code block; the button copies the code and says "Copied" (class
//     "copied") for 1.5 s, then "Copy" again; highlight.js's token classes hljs-* in the code)
//   div.md-table > table   a.md-image   and the plain tags: p, h1-h6, ul/ol/li, blockquote, hr,
//   pre, code, em, strong, del, br, input[type=checkbox][disabled] (task lists).
// Code is highlighted when its fence names a language highlight.js knows (python, py, js, ts,
// json, bash, sh, shell, sql, html, xml, css, go, rust, java, c, cpp, yaml, diff, markdown, and
// the rest of highlight.js's "common" set); otherwise it is shown plain (no guessing).
//
// Streaming (createRenderer): the element is the renderer's (nothing else should change its
// children). The text is lexed from the start of the part not yet final; the blocks before the
// last boundary that no appended text can change (a blank line, then a whole line starting at
// column 0 that begins a block of its own) are rendered once and kept; only the tail after it
// is rendered again, at most once per animation frame (so a frame's work does not grow with the
// answer: about 1 ms per frame all along a 5,000-token answer, where rendering the whole text
// again reached 20 ms a frame by its end; tests/browser/test_markdown.py measures both). A text
// that does not continue the one shown is rendered afresh; one with link reference definitions
// ("[x]: url", which can change earlier blocks) is rendered whole at each frame. The element's
// content equals renderMarkdown(text) after each render.

import { Lexer, Parser, Renderer, getDefaults } from "./vendor-marked.esm.js";
import DOMPurify from "./vendor-purify.es.mjs";
import hljs from "./vendor-highlight.min.js";

const OPTIONS = { gfm: true, breaks: false, async: false };
const SAFE_URL = /^(?:https?:\/\/|mailto:)/i;
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;  // eslint-disable-line no-control-regex
const MAX_HIGHLIGHT = 100_000;  // longer code blocks are shown plain
const COPIED_MS = 1500;

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** An absolute http(s) or mailto URL as an attribute value, or null. */
function safeUrl(href) {
  if (typeof href !== "string") return null;
  const url = href.trim();
  if (!SAFE_URL.test(url) || CONTROL.test(url)) return null;
  try {
    return encodeURI(url).replace(/%25/g, "%");
  } catch {
    return null;
  }
}

function titleAttr(title) {
  return title ? ` title="${escapeHtml(title)}"` : "";
}

class SafeRenderer extends Renderer {
  // Raw HTML, block or inline: shown as text.
  html({ text, block }) {
    return block ? `<p>${escapeHtml(text.trim())}</p>\n` : escapeHtml(text);
  }

  link({ href, title, tokens }) {
    this.inLink = (this.inLink || 0) + 1;
    let inner;
    try {
      inner = this.parser.parseInline(tokens);
    } finally {
      this.inLink -= 1;
    }
    const url = safeUrl(href);
    return url === null ? inner : `<a href="${escapeHtml(url)}"${titleAttr(title)}>${inner}</a>`;
  }

  // Never loaded: a link to the image (its alt text, else its URL), or the alt text alone.
  image({ href, title, text }) {
    const alt = escapeHtml(text);
    const url = safeUrl(href);
    if (url === null || this.inLink) return alt;
    return `<a class="md-image" href="${escapeHtml(url)}"${titleAttr(title || href)}>${alt || escapeHtml(url)}</a>`;
  }

  code({ text, lang }) {
    const name = ((lang || "").match(/^\S*/)[0]).toLowerCase().replace(/[^\w+#.-]/g, "");
    const language = name && text.length <= MAX_HIGHLIGHT ? hljs.getLanguage(name) : undefined;
    let body;
    if (language) {
      try {
        body = hljs.highlight(text, { language: name, ignoreIllegals: true }).value;
      } catch {
        body = escapeHtml(text);
      }
    } else {
      body = escapeHtml(text);
    }
    const cls = name ? ` language-${name}` : "";
    return `<div class="md-code"><div class="md-code-head"><span class="md-code-lang">${escapeHtml(name)}</span></div>`
      + `<pre><code class="hljs${cls}">${body}</code></pre></div>\n`;
  }

  table(token) {
    return `<div class="md-table">${super.table(token)}</div>\n`;
  }
}

const options = { ...getDefaults(), ...OPTIONS, renderer: new SafeRenderer() };

const PURIFY = {
  ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "input", "li", "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th",
    "thead", "tr", "ul"],
  ALLOWED_ATTR: ["href", "title", "class", "align", "start", "type", "checked", "disabled"],
  ALLOWED_URI_REGEXP: SAFE_URL,  // checked on every allowed attribute but these (and class, title)
  ADD_URI_SAFE_ATTR: ["align", "start", "type"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

const purify = DOMPurify(window);  // an instance of its own: its hooks touch nobody else's
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A") {
    const href = node.getAttribute("href");
    if (href !== null && (!SAFE_URL.test(href) || CONTROL.test(href))) node.removeAttribute("href");
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  } else if (node.nodeName === "INPUT") {
    node.setAttribute("type", "checkbox");
    node.setAttribute("disabled", "");
  }
});

function copyFallback(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.cssText = "position:fixed;top:0;left:0;opacity:0;pointer-events:none";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

function copy(event) {
  const button = event.currentTarget;
  const code = button.closest(".md-code")?.querySelector("pre > code");
  const text = code ? code.textContent : "";
  const done = (ok) => {
    button.textContent = ok ? "Copied" : "Copy failed";
    button.classList.toggle("copied", ok);
    clearTimeout(button.copyTimer);
    button.copyTimer = setTimeout(() => {
      button.textContent = "Copy";
      button.classList.remove("copied");
    }, COPIED_MS);
  };
  if (navigator.clipboard?.writeText) {
    navigator.clipboard.writeText(text).then(() => done(true), () => done(copyFallback(text)));
  } else {
    done(copyFallback(text)); // no clipboard API (a page not served over https or localhost)
  }
}

/** Sanitized DOM of the HTML of `tokens`, with copy buttons and links without href unwrapped. */
function build(tokens) {
  const html = Parser.parse(tokens, options);
  const fragment = document.adoptNode(purify.sanitize(html, PURIFY));
  for (const node of [...fragment.childNodes]) {  // the newlines between blocks: a container
    if (node.nodeType !== Node.ELEMENT_NODE) node.remove();  // with white-space: pre-wrap shows them
  }
  for (const a of fragment.querySelectorAll("a:not([href])")) a.replaceWith(...a.childNodes);
  for (const head of fragment.querySelectorAll(".md-code-head")) {
    const button = document.createElement("button");
    button.className = "copy";
    button.type = "button";
    button.textContent = "Copy";
    button.addEventListener("click", copy);
    head.append(button);
  }
  return fragment;
}

function lex(text) {
  return new Lexer(options).lex(text);
}

function normalize(text) {
  return String(text ?? "").replace(/\r\n?/g, "\n");
}

let styled = false;

function addStyles() {
  if (styled || typeof document === "undefined") return;
  styled = true;
  const href = new URL("./markdown.css", import.meta.url).href;
  if ([...document.querySelectorAll('link[rel="stylesheet"]')].some((l) => l.href === href)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  (document.head || document.documentElement).prepend(link);  // first: the page's rules win
}

/** GitHub-flavoured Markdown as sanitized DOM (see the header). */
export function renderMarkdown(text) {
  addStyles();
  return build(lex(normalize(text)));
}

/** Where the tail's blocks that are final end: [count of tokens, offset in tail]. */
function finalPart(tail, tokens) {
  let offset = 0;
  let cut = [0, 0];
  for (let i = 0; i < tokens.length; i += 1) {
    if (i > 0 && tokens[i].type !== "space" && offset >= 2
        && tail.charCodeAt(offset - 1) === 10 && tail.charCodeAt(offset - 2) === 10
        && !/\s/.test(tail[offset]) && tail.indexOf("\n", offset) !== -1) {
      cut = [i, offset];
    }
    offset += tokens[i].raw.length;
  }
  return offset === tail.length ? cut : null;  // null: the tokens do not cover the text
}

/** A renderer of a streaming answer into `element` (see the header). */
export function createRenderer(element) {
  addStyles();
  element.classList.add("markdown");
  let text = "";
  let shown = null;    // the text the element shows
  let done = "";       // its start, rendered into `element` for good
  let tail = [];       // the nodes after those, rendered again each time
  let whole = false;   // render everything each time (link definitions seen)
  let frame = 0;

  function renderWhole(t) {
    done = "";
    tail = [];
    element.replaceChildren(renderMarkdown(t));
  }

  function render() {
    frame = 0;
    const t = normalize(text);
    if (t === shown) return;
    const continues = shown !== null && t.startsWith(shown);
    shown = t;
    if (!continues) {
      whole = false;
      done = "";
      tail = [];
      element.replaceChildren();
    }
    if (whole) return renderWhole(t);
    const rest = t.slice(done.length);
    const tokens = lex(rest);
    const cut = finalPart(rest, tokens);
    if (cut === null || Object.keys(tokens.links).length > 0) {
      whole = true;
      return renderWhole(t);
    }
    for (const node of tail) node.remove();
    const [count, offset] = cut;
    if (count > 0) {
      element.append(build(tokens.slice(0, count)));
      done += rest.slice(0, offset);
    }
    const fragment = build(tokens.slice(count));
    tail = [...fragment.childNodes];
    element.append(fragment);
  }

  return {
    update(value) {
      text = value;
      if (!frame) frame = requestAnimationFrame(render);
    },
    flush() {
      if (frame) cancelAnimationFrame(frame);
      render();
    },
  };
}
