//! Opening where a store cannot open: each failure is its own variant with a message that
//! names the path.

use std::io::Read as _;
use std::path::Path;

use redb::TableDefinition;
use tally_embedded::{EmbeddedStore, Error, FILE_NAME, FORMAT_VERSION};

use crate::support::{TestResult, child_line, child_role, open, small_cache, spawn_child};

fn open_error(dir: &Path) -> Error {
    EmbeddedStore::open(dir, small_cache()).expect_err("the open fails")
}

#[test]
fn a_second_open_in_this_process_is_refused_as_in_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _first = open(dir.path());

    let error = open_error(dir.path());

    assert!(matches!(error, Error::InUse { .. }), "{error:?}");
    assert!(error.is_config());
    let message = error.to_string();
    assert!(
        message.contains("in use by another tally process"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_second_process_opening_the_directory_is_refused_as_in_use() -> TestResult {
    if child_role().as_deref() == Some("second-open") {
        // The child: try to open the directory the parent holds, and say what happened.
        let dir = std::env::var(crate::support::CHILD_DIR)?;
        match EmbeddedStore::open(Path::new(&dir), small_cache()) {
            Ok(_) => println!("child: opened"),
            Err(e @ Error::InUse { .. }) => println!("child: in use: {e}"),
            Err(e) => println!("child: another error: {e:?}"),
        }
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let _held = open(dir.path());

    let child = spawn_child(
        "errors::a_second_process_opening_the_directory_is_refused_as_in_use",
        "second-open",
        dir.path(),
    );
    let output = child.wait_with_output()?;

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .map(child_line)
        .find(|line| line.starts_with("child: "))
        .expect("the child reports");
    assert!(line.starts_with("child: in use: "), "{line}");
    assert!(line.contains("in use by another tally process"), "{line}");
    assert!(line.contains(&dir.path().display().to_string()), "{line}");
    Ok(())
}

#[test]
fn a_file_that_is_not_a_database_is_refused_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(FILE_NAME);
    std::fs::write(
        &path,
        b"not a database at all, just some bytes\n".repeat(200),
    )?;

    let error = open_error(dir.path());

    assert!(matches!(error, Error::NotTally { .. }), "{error:?}");
    assert!(error.is_config());
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a redb database"), "{message}");
    let mut kept = Vec::new();
    std::fs::File::open(&path)?.read_to_end(&mut kept)?;
    assert!(
        kept.starts_with(b"not a database"),
        "the file is left as it was"
    );
    Ok(())
}

#[test]
fn a_file_left_by_a_creation_cut_short_says_it_can_be_removed() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(FILE_NAME), vec![0u8; 4096])?;

    let message = open_error(dir.path()).to_string();

    assert!(
        message.contains("holds no counts and can be removed"),
        "{message}"
    );
    Ok(())
}

#[test]
fn another_programs_redb_file_is_not_a_tally_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(TableDefinition::<&str, &str>::new("settings"))?
            .insert("theme", "dark")?;
        txn.commit()?;
    }

    let error = open_error(dir.path());

    assert!(matches!(error, Error::NotTally { .. }), "{error:?}");
    assert!(
        error.to_string().contains("without tally's metadata table"),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_newer_format_version_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(open(dir.path()));
    {
        let db = redb::Database::create(dir.path().join(FILE_NAME))?;
        let txn = db.begin_write()?;
        txn.open_table(TableDefinition::<&str, u64>::new("tally_meta"))?
            .insert("format_version", FORMAT_VERSION + 1)?;
        txn.commit()?;
    }

    let error = open_error(dir.path());

    assert!(
        matches!(error, Error::UnknownFormat { found, supported, .. } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{error:?}"
    );
    assert!(error.is_config());
    assert!(error.to_string().contains("format version 2"), "{error}");
    Ok(())
}

#[test]
fn a_directory_that_cannot_be_created_is_named() {
    // A path under a file: refused whoever runs the test (root ignores permission bits).
    let error = open_error(Path::new("/dev/null/tally"));

    assert!(matches!(error, Error::CreateDir { .. }), "{error:?}");
    assert!(error.is_config());
    assert_eq!(
        error.to_string(),
        "cannot create the data directory /dev/null/tally"
    );
}

#[test]
fn a_data_directory_that_is_a_file_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("data");
    std::fs::write(&file, b"")?;

    let error = open_error(&file);

    assert!(matches!(error, Error::CreateDir { .. }), "{error:?}");
    assert!(error.to_string().contains(&file.display().to_string()));
    Ok(())
}

#[test]
fn an_empty_file_becomes_a_new_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(FILE_NAME), b"")?;

    let store = open(dir.path());

    assert_eq!(store.path(), dir.path().join(FILE_NAME));
    Ok(())
}
