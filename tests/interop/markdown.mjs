// What Element Web's composer does with a message typed or pasted in it (Markdown
// enabled, the default): it parses the text with commonmark.js and, when the document
// holds only paragraphs, text and line breaks, sends it as plain text; otherwise it
// sends the rendered HTML (headings, lists, quotes…). Reads the text on stdin, prints
// {"plain": bool, "types": [...], "html": "..."} as JSON.
import * as commonmark from "commonmark";

// Element's Markdown.isPlainText: the node types that keep a message plain.
const TEXT_NODES = new Set(["text", "softbreak", "linebreak", "paragraph", "document"]);

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;

const parsed = new commonmark.Parser().parse(input);
const types = new Set();
const walker = parsed.walker();
let step;
while ((step = walker.next())) types.add(step.node.type);
const html = new commonmark.HtmlRenderer({ safe: false, softbreak: "<br />" }).render(parsed);
process.stdout.write(
  JSON.stringify({
    plain: [...types].every((t) => TEXT_NODES.has(t)),
    types: [...types].sort(),
    html,
  }),
);
