// Markdown for the dashboard's answers: a small renderer that builds DOM nodes with
// createElement and text nodes only (no HTML is ever parsed), so nothing in an answer
// (untrusted model output: <script>, <img onerror>, ...) can become markup. It reads what the
// terminal and the HTML export read (CommonMark's blocks and inlines, tables, strikethrough)
// closely enough for an answer; images are not drawn (nothing is fetched), links go to web and
// mail addresses only.
"use strict";

const renderMarkdown = (() => {
  const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?/;
  const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:[ \t]+|$)(.*)$/;
  const SETEXT = /^ {0,3}(=+|-+)[ \t]*$/;
  const DELIMITER = /^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

  function node(tag, children) {
    const element = document.createElement(tag);
    for (const child of children || []) element.append(child);
    return element;
  }

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
      ITEM.test(line);
  }

  function cells(line) {
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    return row.split(/(?<!\\)\|/).map((cell) => cell.trim());
  }

  function blocks(lines) {
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let match;
      if (!line.trim()) { i++; continue; }
      if ((match = FENCE.exec(line))) {
        const fence = match[1];
        const code = [];
        for (i++; i < lines.length; i++) {
          const close = FENCE.exec(lines[i]);
          if (close && close[1][0] === fence[0] && close[1].length >= fence.length && !close[2].trim()) { i++; break; }
          code.push(lines[i]);
        }
        out.push(node("pre", [node("code", [code.join("\n")])]));
      } else if ((match = HEADING.exec(line))) {
        out.push(node("h" + match[1].length, inline(match[2] || "")));
        i++;
      } else if (RULE.test(line)) {
        out.push(node("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && lines[i].trim() && (QUOTE.test(lines[i]) || !startsBlock(lines[i]))) {
          quoted.push(lines[i].replace(QUOTE, ""));
          i++;
        }
        out.push(node("blockquote", blocks(quoted)));
      } else if ((match = ITEM.exec(line))) {
        const ordered = /\d/.test(match[2]);
        const list = node(ordered ? "ol" : "ul");
        if (ordered && parseInt(match[2], 10) !== 1) list.start = parseInt(match[2], 10);
        while (i < lines.length && (match = ITEM.exec(lines[i])) && /\d/.test(match[2]) === ordered) {
          const indent = match[1].length + match[2].length + 1;
          const item = [match[3]];
          for (i++; i < lines.length; i++) {
            const next = lines[i];
            const indented = next.length - next.trimStart().length >= indent;
            if (next.trim() && (indented || !startsBlock(next))) item.push(indented ? next.slice(indent) : next);
            else if (!next.trim() && i + 1 < lines.length && lines[i + 1].trim() &&
                     lines[i + 1].length - lines[i + 1].trimStart().length >= indent) item.push("");
            else break;
          }
          const content = blocks(item);
          const only = content.length === 1 && content[0].tagName === "P";
          list.append(node("li", only ? [...content[0].childNodes] : content));
        }
        out.push(list);
      } else if (line.includes("|") && i + 1 < lines.length && DELIMITER.test(lines[i + 1])) {
        const head = cells(line);
        const table = node("table", [node("thead", [node("tr", head.map((c) => node("th", inline(c))))])]);
        const body = node("tbody");
        for (i += 2; i < lines.length && lines[i].trim() && lines[i].includes("|"); i++) {
          body.append(node("tr", head.map((_, k) => node("td", inline(cells(lines[i])[k] || "")))));
        }
        table.append(body);
        out.push(table);
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim()) {
          if (para.length && SETEXT.test(lines[i])) {
            out.push(node(lines[i].trim()[0] === "=" ? "h1" : "h2", inline(para.join("\n"))));
            para.length = 0;
            i++;
            break;
          }
          if (para.length && startsBlock(lines[i])) break;
          para.push(lines[i].trim());
          i++;
        }
        if (para.length) out.push(node("p", inline(para.join("\n"))));
      }
    }
    return out;
  }

  function safeUrl(url) {
    // A browser drops controls and spaces around (and tabs inside) a URL: "\x01javascript:"
    // is javascript. Such a URL is no link at all.
    if (/[\u0000-\u0020\u007f-\u009f]/.test(url)) return false;
    const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url);
    return !scheme || ["http", "https", "mailto"].includes(scheme[1].toLowerCase());
  }

  function link(text, url) {
    if (!safeUrl(url)) return null;
    const a = node("a", inline(text));
    a.href = url;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    return a;
  }

  // Inline Markdown: the earliest construct wins; what matches none is text.
  const INLINE = [
    [/^\\([!-\/:-@\[-`{-~])/, (m) => [m[1]]],
    [/^(`+)([^]*?[^`])\1(?!`)/, (m) => [node("code", [m[2].replace(/^ (.*) $/, "$1")])]],
    [/^!\[([^\]]*)\]\(([^)\s]*)(?:\s+"[^"]*")?\)/, (m) => { const a = link(m[1], m[2]); return a ? ["!", a] : null; }],
    [/^\[([^\]]+)\]\(([^)\s]*)(?:\s+"[^"]*")?\)/, (m) => { const a = link(m[1], m[2]); return a ? [a] : null; }],
    [/^<((?:https?|mailto):[^\s<>]+)>/, (m) => [link(m[1], m[1])]],
    [/^(\*\*|__)(?=\S)([^]*?\S)\1/, (m) => [node("strong", inline(m[2]))]],
    [/^(\*|_)(?=\S)([^]*?\S)\1/, (m) => [node("em", inline(m[2]))]],
    [/^~~(?=\S)([^]*?\S)~~/, (m) => [node("del", inline(m[1]))]],
    [/^( {2,}|\\)\n/, () => [node("br")]],
  ];

  function inline(text) {
    const out = [];
    let plain = "";
    let i = 0;
    outer: while (i < text.length) {
      const inWord = text[i] === "_" && i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1]);
      if ("\\`![<*_~ ".includes(text[i]) && !inWord) {
        const rest = text.slice(i);
        for (const [pattern, make] of INLINE) {
          const m = pattern.exec(rest);
          const made = m && make(m);
          if (made) {
            if (plain) out.push(plain);
            plain = "";
            out.push(...made);
            i += m[0].length;
            continue outer;
          }
        }
      }
      plain += text[i];
      i++;
    }
    if (plain) out.push(plain);
    return out;
  }

  return (text) => {
    const fragment = document.createDocumentFragment();
    fragment.append(...blocks(String(text).replace(/\r\n?/g, "\n").split("\n")));
    return fragment;
  };
})();
