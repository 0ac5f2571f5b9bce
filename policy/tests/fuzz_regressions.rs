//! Inputs that once crashed or exhausted a reader (fuzz/regressions: the
//! hostile-input reproductions, and what the fuzz targets find): each is
//! read again, and must give positioned errors, not a crash.

use std::path::PathBuf;

use palisade_policy::policies_from_text;

#[test]
fn every_kept_input_is_refused_without_a_crash() {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut read = 0;
    for entry in std::fs::read_dir(&directory).expect("fuzz/regressions") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(&path).expect("a kept input");
        let text = String::from_utf8_lossy(&bytes);
        let refused = policies_from_text(&name, &text).expect_err("a kept input is not a policy");
        assert!(
            refused.0.iter().all(|problem| problem.line.is_some()),
            "{name}: {refused}"
        );
        read += 1;
    }
    assert!(read >= 4, "the kept inputs are there");
}
