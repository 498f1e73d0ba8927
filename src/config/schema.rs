//! The config file's JSON Schema, generated from the file structs
//! ([`super::file`]) so it cannot drift from what the parser accepts.
//! `distill-guard schema` prints it; `config/distill-guard.schema.json` is
//! the committed copy editors point at (a test keeps the two equal).
//!
//! JSON Schema draft-07: the draft TOML editors (taplo, Even Better TOML)
//! and most validators support. The schema checks shape, types, ranges and
//! the fixed words; [`super::load`] remains the authority (cross-field rules,
//! files that must exist, addresses that must parse).

use super::file::FileConfig;

/// Where the committed schema lives, relative to the repository root.
pub const COMMITTED_PATH: &str = "config/distill-guard.schema.json";

/// The schema as a JSON value.
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<FileConfig>();
    schema.insert(
        "title".into(),
        "distill-guard configuration".to_string().into(),
    );
    schema.to_value()
}

/// The schema as written to [`COMMITTED_PATH`]: pretty-printed, with a
/// final newline.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}
