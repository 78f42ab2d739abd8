//! docs/guide.md shows `tests/guide_example.rs` whole, in its "Test your connector"
//! section: this keeps the two identical.

#[test]
fn the_guide_shows_guide_example_rs_as_it_is() {
    let guide = include_str!("../../docs/guide.md");
    let file = include_str!("guide_example.rs");
    let block = format!("```rust,ignore\n{file}```\n");
    assert!(
        guide.contains(&block),
        "docs/guide.md must contain vantiq-connector-tokio/tests/guide_example.rs, unchanged, \
         in a ```rust,ignore block: copy the file into the guide again"
    );
}
