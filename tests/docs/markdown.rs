//! Markdown as mdBook 0.5 reads it: fences, links, heading ids; and the
//! tests that every link and anchor resolves and every page is in SUMMARY.md.

use super::*;

/// Every Markdown file the links test reads: the README and the book's
/// sources, generated pages included.
pub(crate) fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    files.extend(book_pages());
    files
}

/// Every `.md` file under `docs/src`, `SUMMARY.md` included, sorted.
pub(crate) fn book_pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("docs/src"), &mut out);
    out.sort();
    out
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Something with the 1-based number of the line it starts on.
pub(crate) type Numbered<T> = (usize, T);

/// A fenced code block: its info string and its lines.
pub(crate) struct Fence {
    pub(crate) info: String,
    pub(crate) lines: Vec<String>,
}

/// A Markdown text cut into prose lines (1-based line numbers) and fenced
/// code blocks. Only backtick fences are used in this repository; a line
/// whose indentation is stripped starts or ends one.
pub(crate) fn split_fences(text: &str) -> (Vec<Numbered<String>>, Vec<Numbered<Fence>>) {
    let mut prose = Vec::new();
    let mut fences = Vec::new();
    let mut open: Option<(usize, Fence)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            Some((start, mut fence)) => {
                if trimmed.trim_end() == "```" {
                    fences.push((start, fence));
                } else {
                    fence.lines.push(line.to_string());
                    open = Some((start, fence));
                }
            }
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((
                        i + 1,
                        Fence {
                            info: info.trim().to_string(),
                            lines: Vec::new(),
                        },
                    ));
                } else {
                    prose.push((i + 1, line.to_string()));
                }
            }
        }
    }
    assert!(open.is_none(), "a code fence is never closed");
    (prose, fences)
}

/// `line` with inline code spans cut out (their text replaced by spaces),
/// so that nothing in code is read as a link.
pub(crate) fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + run..];
        let closing = "`".repeat(run);
        match after.find(&closing) {
            Some(end) => {
                out.push_str(&" ".repeat(run + end + run));
                rest = &after[end + run..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links `[text](target)` of a page's prose.
pub(crate) fn links(text: &str) -> Vec<(usize, String)> {
    let (prose, _) = split_fences(text);
    let mut out = Vec::new();
    for (n, line) in prose {
        let line = without_code_spans(&line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].trim();
            assert!(
                !target.contains(' '),
                "line {n}: a link target with a space (or a title): {target:?}"
            );
            out.push((n, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// A heading's inline Markdown as the text mdBook reads its id from: code
/// spans keep their text as it is, links keep their text, emphasis marks
/// and escapes go, and outside code smart punctuation turns `--` into a
/// dash (which the id then drops).
pub(crate) fn heading_text(inline: &str) -> String {
    let mut out = String::new();
    let mut rest = inline;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('`') {
            let end = after.find('`').expect("a closed code span in a heading");
            out.push_str(&after[..end]);
            rest = &after[end + 1..];
            continue;
        }
        let next = rest.find('`').unwrap_or(rest.len());
        let mut prose = rest[..next].to_string();
        // [text](target) -> text
        while let Some(open) = prose.find("](") {
            let close = prose[open..]
                .find(')')
                .map(|c| open + c)
                .unwrap_or(prose.len() - 1);
            let start = prose[..open].rfind('[').expect("a link's text");
            prose = format!(
                "{}{}{}",
                &prose[..start],
                &prose[start + 1..open],
                &prose[close + 1..]
            );
        }
        let prose = prose
            .replace("---", "\u{2014}")
            .replace("--", "\u{2013}")
            .replace(['*', '\\'], "");
        out.push_str(&prose);
        rest = &rest[next..];
    }
    out
}

/// mdBook 0.5's heading id for a heading's text (mdbook-html,
/// `utils::id_from_content`): trimmed, lower case, letters, digits, `_` and
/// `-` kept, whitespace made `-`, everything else dropped.
pub(crate) fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c)
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// The ids mdBook gives a page's headings: `{#id}` where written, else the
/// slug of the text, made unique within the page with `-1`, `-2`... in
/// order (`utils::unique_id`).
pub(crate) fn heading_ids(path: &Path) -> BTreeSet<String> {
    let text = read(path);
    let (prose, _) = split_fences(&text);
    let mut used = BTreeSet::new();
    let mut previous_blank = true;
    for (n, line) in &prose {
        // Forms that would make ids this function does not compute: a
        // setext heading, and a definition term (definition lists are on in
        // mdBook 0.5; a term gets an id from the same counter).
        let trimmed = line.trim();
        assert!(
            previous_blank
                || !(trimmed.chars().all(|c| c == '=' || c == '-') && trimmed.len() >= 3),
            "{}:{n}: a setext heading; write `#` headings",
            shown(path)
        );
        assert!(
            previous_blank || !line.starts_with(": "),
            "{}:{n}: a line that starts with `: ` makes a definition list",
            shown(path)
        );
        previous_blank = trimmed.is_empty();
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let mut inline = line[hashes..]
            .trim()
            .trim_end_matches('#')
            .trim()
            .to_string();
        let id = match inline.rfind("{#") {
            Some(i) if inline.ends_with('}') => {
                let id = inline[i + 2..inline.len() - 1].to_string();
                inline.truncate(i);
                id
            }
            _ => slug(&heading_text(&inline)),
        };
        let mut unique = id.clone();
        let mut counter = 1;
        while used.contains(&unique) {
            unique = format!("{id}-{counter}");
            counter += 1;
        }
        used.insert(unique);
    }
    used
}

#[test]
fn heading_ids_are_the_ones_mdbook_writes() {
    // The cases of mdbook-html's own tests (utils.rs, it_normalizes_ids),
    // and forms this book uses.
    assert_eq!(
        slug(&heading_text("`--passes`: add more rustdoc passes")),
        "--passes-add-more-rustdoc-passes"
    );
    assert_eq!(
        slug("Method-call 🐙 expressions \u{1f47c}"),
        "method-call--expressions-"
    );
    assert_eq!(slug("_-_12345"), "_-_12345");
    assert_eq!(slug("中文標題 CJK title"), "中文標題-cjk-title");
    assert_eq!(slug("Über"), "über");
    assert_eq!(
        slug(&heading_text("The override: `lease.mode: pod`")),
        "the-override-leasemode-pod"
    );
    assert_eq!(
        slug(&heading_text("failurePolicy: Ignore or Fail")),
        "failurepolicy-ignore-or-fail"
    );
    assert_eq!(
        slug(&heading_text("[With Helm](helm.md) -- first")),
        "with-helm--first"
    );
    assert_eq!(
        slug(&heading_text("`calmplane register`")),
        "calmplane-register"
    );
}

/// Where a link goes: its file (resolved) and its anchor.
pub(crate) fn resolve(from: &Path, target: &str) -> (PathBuf, Option<String>) {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a.to_string())),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        let mut joined = from.parent().unwrap().to_path_buf();
        for part in path.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    joined.pop();
                }
                part => joined.push(part),
            }
        }
        joined
    };
    (file, anchor)
}

#[test]
fn every_internal_link_and_anchor_resolves() {
    let book = repo().join("docs/src");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let at = format!("{}:{line}: {target}", shown(&file));
            let (path, anchor) = resolve(&file, &target);
            if !path.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            // The book is served as HTML: a page may only link to pages, not
            // to the repository around it, which is not there.
            if file.starts_with(&book) && !path.starts_with(&book) {
                broken.push(format!(
                    "{at}: leaves docs/src (name repository files in `code`)"
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                if path.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a file that is not Markdown"));
                } else if !heading_ids(&path).contains(&anchor) {
                    broken.push(format!("{at}: no heading with the id {anchor:?}"));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The pages `SUMMARY.md` names, as paths under docs/src.
pub(crate) fn summary_pages() -> Vec<PathBuf> {
    let summary = repo().join("docs/src/SUMMARY.md");
    links(&read(&summary))
        .into_iter()
        .map(|(_, target)| resolve(&summary, &target).0)
        .collect()
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let listed: BTreeSet<PathBuf> = summary_pages().into_iter().collect();
    for page in &listed {
        assert!(
            page.is_file(),
            "SUMMARY.md names {}, which does not exist",
            shown(page)
        );
    }
    let missing: Vec<String> = book_pages()
        .into_iter()
        .filter(|p| !p.ends_with("SUMMARY.md") && !listed.contains(p))
        .map(|p| shown(&p))
        .collect();
    assert!(
        missing.is_empty(),
        "pages mdBook would not build, because SUMMARY.md does not name them: {missing:?}"
    );
    // The generated reference pages are in the book too.
    for (path, _) in generated() {
        assert!(
            listed.contains(&repo().join(path)),
            "SUMMARY.md does not name {path}"
        );
    }
}

#[test]
fn the_readme_is_short() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; keep it under 150 and put the rest in the book (docs/src)"
    );
}

/// The ids computed here against the ones mdBook wrote, page by page, in a
/// book built from these sources: `make docs` runs this after `mdbook build
/// docs` (ignored otherwise, since it needs the built book).
#[test]
#[ignore = "needs the book built by `mdbook build docs`; `make docs` runs it"]
fn heading_ids_match_the_built_book() {
    let built = repo().join("docs/book");
    assert!(
        built.is_dir(),
        "no docs/book: run `mdbook build docs` first"
    );
    for page in book_pages() {
        let rel = page.strip_prefix(repo().join("docs/src")).unwrap();
        if rel == Path::new("SUMMARY.md") {
            continue;
        }
        let html = read(&built.join(rel).with_extension("html"));
        let main =
            &html[html.find("<main>").expect("<main>")..html.find("</main>").expect("</main>")];
        let mut written = BTreeSet::new();
        for (i, _) in main.match_indices("<h") {
            let tag = &main[i + 2..];
            if tag.starts_with(|c: char| ('1'..='6').contains(&c)) {
                if let Some(id) = tag[1..].strip_prefix(" id=\"") {
                    written.insert(id[..id.find('"').unwrap()].to_string());
                }
            }
        }
        assert_eq!(heading_ids(&page), written, "{}", rel.display());
    }
}
