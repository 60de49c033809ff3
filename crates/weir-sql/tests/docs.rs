//! `docs/sql.md` lists every scalar function a SQL query can call: this keeps the list equal to
//! the registry the planner uses.

#[test]
fn the_documented_functions_are_the_registered_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/sql.md")).expect("docs/sql.md exists");
    let section = doc.split("### Scalar functions").nth(1).expect("a '### Scalar functions' section");
    // The list is the paragraph after the section's first one.
    let section = section.trim_start().split("\n\n").nth(1).unwrap_or_default();
    let documented: Vec<String> = section.split('`').skip(1).step_by(2).map(str::to_string).collect();
    let registered = weir_sql::planner::Functions::get().scalar_names();
    if std::env::var_os("WEIR_PRINT_FUNCTIONS").is_some() {
        println!("{}", registered.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "));
    }
    assert_eq!(documented, registered, "docs/sql.md's function list differs from the registry");
}
