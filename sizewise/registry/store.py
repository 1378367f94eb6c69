"""The registry file: one SQLite database, WAL mode, schema versioned by PRAGMA user_version.

Why SQLite: one file a user can copy, many readers beside one writer (WAL), and transactions, so a
record written by a process that is killed half-way is either all there or not there at all.
Why no ORM: eight small statements; JSON goes into TEXT columns (never pickle).

Failure rules (each one line, SizewiseError):
  - a file from a newer schema is refused (we never downgrade someone's registry);
  - a file that is not an intact SQLite database is reported, never recreated over;
  - a registry locked by another writer is waited for (SIZEWISE_REGISTRY_TIMEOUT, default 30 s).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sizewise.errors import SizewiseError

ENV_PATH = "SIZEWISE_REGISTRY"
ENV_TIMEOUT = "SIZEWISE_REGISTRY_TIMEOUT"
SQLITE_MAGIC = b"SQLite format 3\x00"
SHORT = 12  # characters of an id shown in tables
MIN_PREFIX = 4  # shortest ID prefix accepted (as git): 'c' or 'ab' are too easy to mistype into a match


def default_path() -> Path:
    """$SIZEWISE_REGISTRY, else $XDG_DATA_HOME/sizewise/registry.sqlite (~/.local/share when unset)."""
    if os.environ.get(ENV_PATH):
        return Path(os.environ[ENV_PATH]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sizewise" / "registry.sqlite"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps(obj: Any) -> Optional[str]:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


def loads(text: Optional[str]) -> Any:
    return None if text is None else json.loads(text)


# --- schema: ordered migrations; migration i brings user_version from i to i + 1 -----------------

def _script(c: sqlite3.Connection, sql: str) -> None:
    """Statement by statement: executescript() would COMMIT the migration's transaction first."""
    code = "\n".join(ln.split("--")[0] for ln in sql.splitlines())
    for stmt in code.split(";"):
        if stmt.strip():
            c.execute(stmt)


def _v1(c: sqlite3.Connection) -> None:
    _script(c, """
    CREATE TABLE models (
      id TEXT PRIMARY KEY,            -- sha256 of the tensor files (hashing.py)
      kind TEXT NOT NULL,             -- safetensors | gguf | onnx | config | preset
      name TEXT NOT NULL,
      parent_id TEXT,                 -- first parent recorded; no foreign key: gc may drop a parent
      recipe TEXT, recipe_name TEXT,  -- JSON; and its short name for filters
      created TEXT NOT NULL, updated TEXT NOT NULL
    );
    CREATE INDEX models_parent ON models(parent_id);
    CREATE TABLE model_paths (        -- where a model has been seen on disk
      path TEXT PRIMARY KEY, model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE, seen TEXT NOT NULL
    );
    CREATE INDEX model_paths_model ON model_paths(model_id);
    CREATE TABLE file_hashes (        -- the hash cache: valid while size and mtime are unchanged
      path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, hashed TEXT NOT NULL
    );
    CREATE TABLE runs (
      id INTEGER PRIMARY KEY, verb TEXT NOT NULL,
      model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE, parent_id TEXT,
      recipe TEXT, command TEXT, versions TEXT, machine TEXT, protocol TEXT, artifacts TEXT, extra TEXT,
      n_metrics INTEGER NOT NULL,     -- how many metric rows belong to this run (a completeness check)
      created TEXT NOT NULL
    );
    CREATE INDEX runs_model ON runs(model_id);
    CREATE TABLE metrics (
      run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
      model_id TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
      tokens INTEGER, protocol TEXT, measured TEXT NOT NULL,
      PRIMARY KEY (run_id, name)
    );
    CREATE INDEX metrics_model ON metrics(model_id, name);
    CREATE TABLE tags (
      model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE, name TEXT NOT NULL, created TEXT NOT NULL,
      PRIMARY KEY (model_id, name)
    );
    """)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


class Registry:
    """An open registry. `Registry.open()` is the way in; every write is one transaction."""

    def __init__(self, conn: sqlite3.Connection, path: Path, timeout: float):
        self.conn, self.path, self.timeout = conn, path, timeout

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = True,
             timeout: float | None = None) -> "Registry":
        """Open (and migrate) the registry at `path` (default: default_path()).

        create=False: a missing file opens as an empty in-memory registry and nothing is written,
        so `registry list` on a fresh machine leaves no file behind.
        """
        p = Path(path).expanduser() if path else default_path()
        t = float(os.environ.get(ENV_TIMEOUT, 30)) if timeout is None else float(timeout)
        if p.is_dir():
            raise SizewiseError(f"registry {p} is a directory: give a file path (--registry or {ENV_PATH})")
        exists = p.exists() and p.stat().st_size > 0
        if exists:
            with open(p, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
            if head != SQLITE_MAGIC:
                raise _corrupt(p, "not an SQLite file")
        elif not create:
            reg = cls(_connect(":memory:", t), p, t)
            reg._migrate()
            return reg
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(str(p), t)
        except sqlite3.DatabaseError as e:
            raise _corrupt(p, str(e)) from None
        reg = cls(conn, p, t)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise SizewiseError(f"registry {p} has schema version {version}, newer than this sizewise reads "
                                    f"({SCHEMA_VERSION}): upgrade sizewise, or point --registry/{ENV_PATH} elsewhere")
            if exists:
                bad = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
                if bad != ["ok"]:
                    conn.close()
                    raise _corrupt(p, bad[0])
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                reg._locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            reg._migrate()
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise reg._lock_error() from None
            raise
        except sqlite3.DatabaseError as e:  # "file is not a database", "disk image is malformed"
            conn.close()
            raise _corrupt(p, str(e)) from None
        return reg

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _migrate(self) -> None:
        if self.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self.transaction():  # re-read inside the lock: another process may have migrated meanwhile
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, SCHEMA_VERSION):
                MIGRATIONS[i](self.conn)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- transactions --------------------------------------------------------------------------

    def _lock_error(self) -> SizewiseError:
        return SizewiseError(f"registry {self.path} is locked by another process (waited {self.timeout:g} s): "
                             f"try again, or raise {ENV_TIMEOUT}")

    def _locked(self, fn):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise self._lock_error() from None
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front (waiting up to the timeout),
        so a transaction never fails half-way for a lock; any exception rolls everything back."""
        self._locked(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._locked(lambda: self.conn.execute("COMMIT"))

    # --- the hash cache ------------------------------------------------------------------------

    def cached_hash(self, path: str, size: int, mtime_ns: int) -> Optional[str]:
        row = self.conn.execute("SELECT sha256 FROM file_hashes WHERE path=? AND size=? AND mtime_ns=?",
                                (path, size, mtime_ns)).fetchone()
        return row[0] if row else None

    def identify(self, spec) -> "Identity":  # noqa: F821 - hashing.Identity
        from sizewise.registry.hashing import identify
        return identify(spec, self.cached_hash)

    # --- writing -------------------------------------------------------------------------------

    def record(self, verb: str, ident, parent=None, *, recipe: Any = None, metrics: list[dict] | None = None,
               protocol: dict | None = None, artifacts: list[str] | None = None, extra: dict | None = None,
               command: str | None = None, versions: dict | None = None, machine: dict | None = None) -> str:
        """One run on one model, in one transaction: the model (and its parent), the paths, the
        hash cache, the run and its metric rows. Returns the model id."""
        metrics = metrics or []
        t = now()
        with self.transaction() as c:
            for i in (ident, parent):
                if i is not None:
                    for fh in i.files:
                        c.execute("INSERT OR REPLACE INTO file_hashes VALUES (?,?,?,?,?)",
                                  (fh.path, fh.size, fh.mtime_ns, fh.sha256, t))
            if parent is not None:
                self._upsert_model(c, parent, None, None, t)
            pid = parent.id if parent is not None and parent.id != ident.id else None
            self._upsert_model(c, ident, pid, recipe, t)
            cur = c.execute("INSERT INTO runs (verb, model_id, parent_id, recipe, command, versions, machine, protocol,"
                            " artifacts, extra, n_metrics, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (verb, ident.id, pid, dumps(recipe), command, dumps(versions), dumps(machine),
                             dumps(protocol), dumps(artifacts), dumps(extra), len(metrics), t))
            run_id = cur.lastrowid
            c.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?,?)",
                          [(run_id, ident.id, m["name"], m["value"], m.get("tokens"), dumps(m.get("protocol")), t)
                           for m in metrics])
        return ident.id

    @staticmethod
    def _upsert_model(c, ident, parent_id, recipe, t) -> None:
        rname = recipe_name(recipe)
        c.execute("INSERT INTO models (id, kind, name, parent_id, recipe, recipe_name, created, updated) "
                  "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET updated=excluded.updated, "
                  "parent_id=COALESCE(models.parent_id, excluded.parent_id), "
                  "recipe=COALESCE(models.recipe, excluded.recipe), "
                  "recipe_name=COALESCE(models.recipe_name, excluded.recipe_name)",
                  (ident.id, ident.kind, ident.name, parent_id, dumps(recipe), rname, t, t))
        if ident.path:
            c.execute("INSERT OR REPLACE INTO model_paths VALUES (?,?,?)", (ident.path, ident.id, t))

    def tag(self, id_or_prefix: str, name: str, remove: bool = False) -> str:
        """Attach (or remove) a stage name such as candidate or production; returns the full id."""
        check_tag(name)
        mid = self.resolve(id_or_prefix)
        with self.transaction() as c:
            if remove:
                if not c.execute("DELETE FROM tags WHERE model_id=? AND name=?", (mid, name)).rowcount:
                    raise SizewiseError(f"model {mid[:SHORT]} has no tag {name!r}")
            else:
                c.execute("INSERT OR IGNORE INTO tags VALUES (?,?,?)", (mid, name, now()))
        return mid

    def gc(self, dry_run: bool = False) -> dict:
        """Forget paths whose files are gone, then models left with no path, unless a model still on
        disk descends from them (lineage must stay whole). Presets have no files and stay."""
        paths = self.conn.execute("SELECT path, model_id FROM model_paths").fetchall()
        gone_paths = [p for p, _ in paths if not Path(p).exists()]
        cache_gone = [p for (p,) in self.conn.execute("SELECT path FROM file_hashes") if not Path(p).exists()]
        alive_paths = {m for p, m in paths if p not in set(gone_paths)}
        models = {r[0]: r[1] for r in self.conn.execute("SELECT id, parent_id FROM models WHERE kind != 'preset'")}
        keep = set(alive_paths)
        for mid in list(alive_paths):  # ancestors of live models stay
            seen = set()
            while (mid := models.get(mid)) and mid not in seen:
                seen.add(mid)
                keep.add(mid)
        drop = sorted(m for m in models if m not in keep)
        if not dry_run:
            with self.transaction() as c:
                c.executemany("DELETE FROM model_paths WHERE path=?", [(p,) for p in gone_paths])
                c.executemany("DELETE FROM file_hashes WHERE path=?", [(p,) for p in cache_gone])
                c.executemany("DELETE FROM models WHERE id=?", [(m,) for m in drop])
        return {"paths_removed": gone_paths, "models_removed": drop, "hash_cache_removed": len(cache_gone),
                "dry_run": dry_run}

    # --- reading -------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """A full id from an id, a unique id prefix, a tag on exactly one model, or a recorded path."""
        ref = (ref or "").strip()
        if not ref:
            raise SizewiseError("no model ID given: see `sizewise registry list`")
        c = self.conn
        low = ref.lower()
        if len(low) >= MIN_PREFIX and all(ch in "0123456789abcdef" for ch in low):
            rows = c.execute("SELECT id, name FROM models WHERE id LIKE ? ORDER BY id LIMIT 11",
                             (low + "%",)).fetchall()
            if len(rows) == 1:
                return rows[0][0]
            if len(rows) > 1:
                cands = ", ".join(f"{i[:max(SHORT, len(low) + 2)]} ({n})" for i, n in rows[:10])
                raise SizewiseError(f"ambiguous ID prefix {ref!r}: matches {cands}{' ...' if len(rows) > 10 else ''}; "
                                    "give more characters")
        rows = c.execute("SELECT model_id FROM tags WHERE name=?", (ref,)).fetchall()
        if len(rows) == 1:
            return rows[0][0]
        if len(rows) > 1:
            cands = ", ".join(r[0][:SHORT] for r in rows)
            raise SizewiseError(f"tag {ref!r} is on {len(rows)} models ({cands}): give an ID prefix instead")
        p = Path(ref).expanduser()
        if p.exists():
            row = c.execute("SELECT model_id FROM model_paths WHERE path=?", (str(p.resolve()),)).fetchone()
            if row:
                return row[0]
        recent = c.execute("SELECT id, name FROM models ORDER BY updated DESC, id LIMIT 8").fetchall()
        hint = ("recorded models: " + ", ".join(f"{i[:SHORT]} ({n})" for i, n in recent)) if recent else \
            f"the registry {self.path} is empty"
        short = len(low) < MIN_PREFIX and all(ch in "0123456789abcdef" for ch in low)
        why = f" (an ID prefix needs {MIN_PREFIX} characters or more)" if short else ""
        raise SizewiseError(f"unknown model ID {ref!r}{why}; {hint} (see `sizewise registry list`)")

    def _model_row(self, mid: str) -> dict:
        r = self.conn.execute("SELECT id, kind, name, parent_id, recipe, recipe_name, created, updated "
                              "FROM models WHERE id=?", (mid,)).fetchone()
        if r is None:
            return {"id": mid, "missing": True}
        d = dict(zip(("id", "kind", "name", "parent", "recipe", "recipe_name", "created", "updated"), r))
        d["recipe"] = loads(d["recipe"])
        d["paths"] = [p for (p,) in self.conn.execute("SELECT path FROM model_paths WHERE model_id=? ORDER BY seen",
                                                      (mid,))]
        d["tags"] = [t for (t,) in self.conn.execute("SELECT name FROM tags WHERE model_id=? ORDER BY created, name",
                                                     (mid,))]
        return d

    def get(self, id_or_prefix: str) -> dict:
        """Everything known about one model: the model row, paths, tags, runs, metrics, lineage."""
        from sizewise.registry.lineage import lineage
        mid = self.resolve(id_or_prefix)
        d = self._model_row(mid)
        d["files_present"] = any(Path(p).exists() for p in d["paths"]) if d["paths"] else d["kind"] == "preset"
        d["runs"] = self.runs(mid)
        d["metrics"] = self.metrics(mid)
        d["lineage"] = lineage(self, mid)
        return d

    def lineage(self, id_or_prefix: str) -> dict:
        """The chain to the root and the tree under the root (lineage.py)."""
        from sizewise.registry.lineage import lineage
        return lineage(self, self.resolve(id_or_prefix))

    def runs(self, mid: str) -> list[dict]:
        cols = ("id", "verb", "parent", "recipe", "command", "versions", "machine", "protocol", "artifacts", "extra",
                "n_metrics", "created")
        rows = self.conn.execute(f"SELECT id, verb, parent_id, recipe, command, versions, machine, protocol, artifacts, "
                                 f"extra, n_metrics, created FROM runs WHERE model_id=? ORDER BY id", (mid,))
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            for k in ("recipe", "versions", "machine", "protocol", "artifacts", "extra"):
                d[k] = loads(d[k])
            out.append(d)
        return out

    def metrics(self, id_or_prefix: str) -> list[dict]:
        """Every measurement on a model, oldest first: name, value, tokens, protocol, verb, run, time."""
        mid = self.resolve(id_or_prefix) if len(id_or_prefix) != 64 else id_or_prefix
        rows = self.conn.execute("SELECT m.name, m.value, m.tokens, m.protocol, r.verb, m.run_id, m.measured "
                                 "FROM metrics m JOIN runs r ON r.id = m.run_id WHERE m.model_id=? "
                                 "ORDER BY m.run_id, m.name", (mid,))
        return [{"name": n, "value": v, "tokens": t, "protocol": loads(p), "verb": verb, "run": run, "measured": when}
                for n, v, t, p, verb, run, when in rows]

    def list_models(self, parent: str | None = None, recipe: str | None = None, metric: str | None = None,
                    tag: str | None = None, verb: str | None = None) -> list[dict]:
        """Models, newest first, each with its latest value of every metric.

        parent: an id prefix (direct children); recipe: substring of the recipe name; metric: 'NAME'
        (has it) or 'NAME<op>VALUE' with op one of < <= > >= = (its latest value); tag: a tag name.
        """
        sql, args = "SELECT id FROM models WHERE 1=1", []
        if parent:
            sql += " AND parent_id=?"
            args.append(self.resolve(parent))
        if recipe:
            sql += " AND recipe_name LIKE ?"
            args.append(f"%{recipe}%")
        if tag:
            sql += " AND id IN (SELECT model_id FROM tags WHERE name=?)"
            args.append(tag)
        if verb:
            sql += " AND id IN (SELECT model_id FROM runs WHERE verb=?)"
            args.append(verb)
        ids = [r[0] for r in self.conn.execute(sql + " ORDER BY updated DESC, id", args)]
        cond = parse_metric_filter(metric) if metric else None
        out = []
        for mid in ids:
            d = self._model_row(mid)
            d["latest"] = self.latest_metrics(mid)
            d["verbs"] = [v for (v,) in self.conn.execute("SELECT DISTINCT verb FROM runs WHERE model_id=? ORDER BY verb",
                                                          (mid,))]
            if cond and not cond(d["latest"]):
                continue
            out.append(d)
        return out

    def latest_metrics(self, mid: str) -> dict[str, float]:
        rows = self.conn.execute("SELECT name, value FROM metrics WHERE model_id=? ORDER BY run_id", (mid,))
        return {n: v for n, v in rows}  # later runs overwrite earlier ones


def recipe_name(recipe: Any) -> Optional[str]:
    if recipe is None:
        return None
    if isinstance(recipe, str):
        return recipe
    if isinstance(recipe, dict):
        for k in ("name", "recipe_name", "recipe"):
            if isinstance(recipe.get(k), str):
                return recipe[k]
    return None


def check_tag(name: str) -> None:
    """Stage names: letters, digits, '-', '_', '.'; not all hex (it would read as an ID prefix)."""
    import re
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", name or ""):
        raise SizewiseError(f"bad tag {name!r}: use a name such as candidate or production "
                            "(a letter, then letters, digits, '-', '_' or '.')")
    if all(ch in "0123456789abcdef" for ch in name.lower()):
        raise SizewiseError(f"tag {name!r} looks like an ID prefix: add a letter beyond a-f")


_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
        "=": lambda a, b: math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b}


def parse_metric_filter(expr: str) -> Callable[[dict], bool]:
    """'ppl' (present) or 'ppl<15', 'top1>=0.9', 'bytes_on_disk<1e8' on the latest values."""
    from sizewise.registry.vocabulary import canonical
    for op in ("<=", ">=", "<", ">", "="):
        if op in expr:
            name, _, value = expr.partition(op)
            name = canonical(name.strip())
            try:
                v = float(value)
            except ValueError:
                raise SizewiseError(f"--metric {expr!r}: {value.strip()!r} is not a number "
                                    "(use NAME, or NAME<VALUE with < <= > >= =)") from None
            return lambda latest: name in latest and _OPS[op](latest[name], v)
    name = canonical(expr.strip())
    if not name:
        raise SizewiseError("--metric needs a name, e.g. --metric ppl or --metric 'ppl<15'")
    return lambda latest: name in latest


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)  # autocommit; explicit BEGIN below
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses no committed transaction's atomicity
    return conn


def _corrupt(p: Path, why: str) -> SizewiseError:
    return SizewiseError(f"registry {p} is not a readable registry ({why}): it was left untouched; "
                         f"move it aside or restore it, or point --registry/{ENV_PATH} elsewhere")
