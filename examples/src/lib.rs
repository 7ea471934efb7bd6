//! Example servers live in this package's `[[example]]` targets: `cargo run --example chat`.
//! This library holds what they share.

use ws_kit::typescript::TypeScript;

/// `--emit-typescript <file>` on the command line: writes the example's TypeScript module
/// (`module()`) to `<file>`, prints what it could not mirror to stderr, and returns `true`, after
/// which the example exits instead of serving. Without the flag: `false`.
pub fn emit_typescript(module: impl FnOnce() -> TypeScript) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(at) = args.iter().position(|a| a == "--emit-typescript") else {
        return false;
    };
    let Some(path) = args.get(at + 1) else {
        eprintln!("--emit-typescript needs a file: --emit-typescript web/messages.ts");
        std::process::exit(2);
    };
    match module().write(path) {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("not mirrored: {warning}");
            }
            eprintln!("wrote {path}");
            true
        }
        Err(e) => {
            eprintln!("could not write {path}: {e}");
            std::process::exit(1);
        }
    }
}
