//! The image's Nix database (`nix_db = true` in the image spec): `/nix/var/nix/db`, registering
//! every store path of the closure with its NAR hash, NAR size and references, so that `nix` works
//! inside the container (dockerTools' `includeNixDB`, nix2container's `initializeNixDatabase`).
//!
//! Layout, as Nix 2.8 (and every later Nix so far) writes it: `db/schema` holds the schema version,
//! `10`, without a newline; `db/db.sqlite` has the tables of Nix's `schema.sql` — `ValidPaths`,
//! `Refs` (self-references included), `DerivationOutputs` (empty: no `.drv` is in a runtime
//! closure) — with its indexes and trigger, the `CREATE` statements spelt exactly as Nix's own
//! database stores them. `Realisations` is not there: Nix creates it (and `db/ca-schema`) only
//! when the `ca-derivations` experimental feature is on, on first open.
//!
//! Deterministic bytes: SQLite's file format holds no time, host or random value; what varies is
//! the page layout, which depends only on the SQLite version (pinned: the bundled library of
//! `rusqlite`, locked in Cargo.lock), the page size and the order of writes. So the database is
//! made in a fresh file with a fixed page size (4096), rollback journal (a WAL database needs its
//! `-wal` file), `secure_delete` (freed space is zeroed), rows inserted in sorted order with
//! explicit ids, one transaction, then `VACUUM` rewrites it compactly. `registrationTime` is the
//! build's epoch. Nix switches the file to WAL mode the first time it opens it (that needs a
//! writable `/nix/var/nix/db`: the container's root user has one).

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, params};

use crate::closure::{Closure, STORE_DIR};
use crate::tarball::{Content, Entry, Kind};

/// Nix's database schema version (`nixSchemaVersion`).
pub const SCHEMA_VERSION: u32 = 10;

/// The directory, relative to the image root.
pub const DB_DIR: &str = "nix/var/nix/db";

/// Nix's `schema.sql`, as `sqlite_master` holds it in a database Nix 2.8 made.
const SCHEMA: &str = r#"CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);
CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
CREATE INDEX IndexReferrer on Refs(referrer);
CREATE INDEX IndexReference on Refs(reference);
CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// The bytes of `db.sqlite` registering every path of `closure`, registered at `registration_time`.
/// Fails naming the first store path whose NAR hash the closure input did not give.
pub fn database(closure: &Closure, registration_time: u64) -> Result<Vec<u8>> {
    if let Some(info) = closure.iter().find(|i| i.nar_hash.is_none()) {
        bail!(
            "nix_db = true needs the NAR hash of every store path, and the closure input gives none for {}: \
             use `nix path-info --json --recursive` output, structured-attrs exportReferencesGraph or \
             closureInfo (the classic exportReferencesGraph text has no hashes)",
            info.path
        );
    }
    let dir = tempfile::Builder::new().prefix("nixoci-nixdb.").tempdir().context("creating a temporary directory")?;
    let file = dir.path().join("db.sqlite");
    let fail = || format!("writing the Nix database {}", file.display());
    let mut db = Connection::open(&file).with_context(fail)?;
    db.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = DELETE; PRAGMA auto_vacuum = NONE; \
         PRAGMA secure_delete = ON; PRAGMA encoding = 'UTF-8';",
    )
    .with_context(fail)?;
    let tx = db.transaction().with_context(fail)?;
    tx.execute_batch(SCHEMA).with_context(fail)?;
    // The closure iterates sorted by store path: ids 1..=n in path order.
    let ids: std::collections::BTreeMap<_, i64> = closure.iter().zip(1..).map(|(i, id)| (&i.path, id)).collect();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize) \
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            )
            .with_context(fail)?;
        let time = i64::try_from(registration_time).context("the registration time does not fit SQLite")?;
        for info in closure.iter() {
            let hash = info.nar_hash.map(|h| format!("sha256:{}", h.to_hex())).unwrap_or_default();
            let size = info.nar_size.map(i64::try_from).transpose().context("a NAR size does not fit SQLite")?;
            insert
                .execute(params![ids[&info.path], format!("{STORE_DIR}/{}", info.path.base_name()), hash, time, size])
                .with_context(|| format!("registering {}", info.path))?;
        }
        let mut refs = tx.prepare("INSERT INTO Refs (referrer, reference) VALUES (?1, ?2)").with_context(fail)?;
        for info in closure.iter() {
            let from = ids[&info.path];
            let mut to: Vec<i64> = info.references.iter().map(|r| ids[r]).collect();
            if closure.refers_to_itself(&info.path) {
                to.push(from);
            }
            to.sort_unstable();
            for r in to {
                refs.execute(params![from, r])
                    .with_context(|| format!("registering the references of {}", info.path))?;
            }
        }
    }
    tx.commit().with_context(fail)?;
    db.execute_batch("VACUUM").with_context(fail)?;
    db.close().map_err(|(_, e)| e).with_context(fail)?;
    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))
}

/// The entries of `/nix/var/nix/db` (its parents are added by the customisation layer).
pub fn entries(closure: &Closure, registration_time: u64) -> Result<Vec<Entry>> {
    let file = |name: &str, bytes: Vec<u8>| Entry {
        path: format!("{DB_DIR}/{name}"),
        kind: Kind::File { size: bytes.len() as u64, content: Content::Inline(bytes) },
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    Ok(vec![
        Entry::dir(DB_DIR, 0o755),
        file("db.sqlite", database(closure, registration_time)?),
        file("schema", SCHEMA_VERSION.to_string().into_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::info;
    use crate::closure::{NarHash, PathInfo};

    fn closure() -> Closure {
        let with_hash = |mut i: PathInfo, n: u8| {
            i.nar_hash = Some(NarHash([n; 32]));
            i
        };
        let mut app = with_hash(info("app-1.0", 300, &["lib-2", "glibc-2.40"]), 3);
        app.references.insert(app.path.clone()); // a self-reference
        Closure::new([
            with_hash(info("glibc-2.40", 100, &[]), 1),
            with_hash(info("lib-2", 200, &["glibc-2.40"]), 2),
            app,
        ])
        .unwrap()
    }

    #[test]
    fn registers_every_path_hash_size_and_reference() {
        let c = closure();
        let bytes = database(&c, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("db.sqlite");
        std::fs::write(&f, &bytes).unwrap();
        let db = Connection::open(&f).unwrap();
        let rows: Vec<(String, String, i64, i64)> = db
            .prepare("SELECT path, hash, narSize, registrationTime FROM ValidPaths ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 3);
        let app = rows.iter().find(|r| r.0.ends_with("-app-1.0")).unwrap();
        assert_eq!((app.1.as_str(), app.2, app.3), (format!("sha256:{}", "03".repeat(32)).as_str(), 300, 1));
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "ids follow the sorted paths");
        let refs: Vec<(String, String)> = db
            .prepare(
                "SELECT a.path, b.path FROM Refs JOIN ValidPaths a ON a.id = referrer JOIN ValidPaths b ON b.id = reference",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let named = |s: &str| s.rsplit_once('/').unwrap().1.split_once('-').unwrap().1.to_owned();
        let mut refs: Vec<(String, String)> = refs.iter().map(|(a, b)| (named(a), named(b))).collect();
        refs.sort();
        let want = [("app-1.0", "app-1.0"), ("app-1.0", "glibc-2.40"), ("app-1.0", "lib-2"), ("lib-2", "glibc-2.40")];
        assert_eq!(refs, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
        let version: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 4096);
    }

    #[test]
    fn same_closure_same_bytes_and_time_is_the_epoch() {
        let c = closure();
        assert_eq!(database(&c, 1).unwrap(), database(&c, 1).unwrap());
        assert_ne!(database(&c, 1).unwrap(), database(&c, 2).unwrap());
    }

    #[test]
    fn a_path_without_nar_hash_is_named() {
        let c = Closure::new([info("nohash-1", 1, &[])]).unwrap();
        let err = format!("{:#}", database(&c, 1).unwrap_err());
        assert!(err.contains("-nohash-1") && err.contains("NAR hash"), "{err}");
    }
}
