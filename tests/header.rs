//! The C header exports only the C API: every macro, type and function it
//! declares carries the `coreflow_` / `COREFLOW_` prefix.

const HEADER: &str = include_str!("../include/coreflow.h");

/// The names the header declares: macros, typedef names, struct and enum
/// tags, and functions.
fn declared_names(header: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_comment = false;
    for line in header.lines() {
        let t = line.trim();
        if in_comment {
            in_comment = !t.contains("*/");
            continue;
        }
        if t.starts_with("/*") {
            in_comment = !t.contains("*/");
            continue;
        }
        let word = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(rest) = t.strip_prefix("#define ") {
            names.push(word(rest));
        } else if let Some(rest) = t.strip_prefix("typedef struct ") {
            names.push(word(rest));
        } else if let Some(rest) = t.strip_prefix("typedef enum ") {
            names.push(word(rest));
        } else if t.starts_with("} ") && t.ends_with(';') {
            names.push(word(&t[2..]));
        } else if t.starts_with("typedef ") && t.ends_with(';') {
            // typedef <type> name; or a function pointer typedef (*name)(...)
            if let Some(p) = t.find("(*") {
                names.push(word(&t[p + 2..]));
            } else {
                let last = t.trim_end_matches(';').rsplit(' ').next().unwrap_or("");
                names.push(word(last));
            }
        } else if let Some(p) = t.find('(') {
            // A function declaration: the identifier right before '('.
            if !t.starts_with('#')
                && !t.starts_with("extern")
                && (t.ends_with(");") || t.ends_with(','))
            {
                let before = t[..p].trim_end();
                let name: String = before
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn prefixed(name: &str) -> bool {
    name.starts_with("coreflow_") || name.starts_with("COREFLOW_")
}

#[test]
fn every_declared_name_has_the_prefix() {
    let names = declared_names(HEADER);
    assert!(names.len() > 50, "parsed only {} names", names.len());
    assert!(names.iter().any(|n| n == "coreflow_sample"));
    let bad: Vec<&String> = names.iter().filter(|n| !prefixed(n)).collect();
    assert!(
        bad.is_empty(),
        "names without the prefix in the header: {bad:?}"
    );
}

#[test]
fn the_check_catches_an_unprefixed_name() {
    for leak in [
        "#define NOISE_TAIL_MAX 0.05\n",
        "typedef struct Model Model;\n",
        "int helper(int x);\n",
    ] {
        let names = declared_names(leak);
        assert!(
            names.iter().any(|n| !prefixed(n)),
            "{leak:?} gave {names:?}"
        );
    }
}

/// The documentation of every function follows one template: a one-line
/// summary, then `Returns:`, `Ownership:`, `Allocates:` and
/// `Thread safety:` in that order (each may continue on the next lines).
#[test]
fn every_function_is_documented_by_the_template() {
    const FIELDS: [&str; 4] = ["Returns: ", "Ownership: ", "Allocates: ", "Thread safety: "];
    let mut doc: Vec<&str> = Vec::new();
    let mut functions = 0;
    for line in HEADER.lines() {
        let t = line.trim();
        if t == "/**" {
            doc.clear();
        } else if let Some(text) = t.strip_prefix("* ").or(t.strip_prefix('*')) {
            if t != "*/" {
                doc.push(text);
            }
        }
        let is_function = t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.contains("coreflow_")
            && t.ends_with(");")
            && !t.starts_with("typedef")
            && !t.starts_with('#');
        if !is_function {
            continue;
        }
        functions += 1;
        let name = t[..t.find('(').unwrap()].rsplit([' ', '*']).next().unwrap();
        // Section banners come first; the summary is the next line.
        let body: Vec<&str> = match doc.iter().position(|l| l.starts_with("----")) {
            Some(0) => doc[2..].to_vec(),
            _ => doc.clone(),
        };
        assert!(
            !body.is_empty() && body.get(1).is_none_or(|l| l.is_empty()),
            "{name}: the summary is not one line"
        );
        let at: Vec<usize> = FIELDS
            .iter()
            .map(|f| {
                body.iter()
                    .position(|l| l.starts_with(f))
                    .unwrap_or_else(|| panic!("{name}: no `{f}` line"))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "{name}: fields out of order"
        );
        assert!(
            body[at[0]..].iter().all(|l| !l.is_empty()),
            "{name}: the fields end the documentation"
        );
        doc.clear();
    }
    assert!(functions >= 27, "found {functions} functions");
}
