//! The layout map is written twice, in the README and in `src/lib.rs`; they must agree.

/// The lines of the first Markdown table after `marker` in `text`, with `prefix` removed.
fn table_after(text: &str, marker: &str, prefix: &str) -> Vec<String> {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} found"));
    text[at..]
        .lines()
        .map(|line| line.strip_prefix(prefix).unwrap_or(line).trim_end())
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lib_rs_has_the_readme_layout_map() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let lib = std::fs::read_to_string(format!("{root}/src/lib.rs")).expect("src/lib.rs");
    let in_readme = table_after(&readme, "## Layout", "");
    let in_lib = table_after(&lib, "# Layout", "//! ");
    assert!(in_readme.len() > 5, "README layout map: {in_readme:?}");
    assert_eq!(
        in_lib, in_readme,
        "src/lib.rs and README.md layout maps differ"
    );
}
