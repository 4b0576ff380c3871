/**
 * Model snapshots and exports on disk: the storage layer only. What goes into a snapshot (which
 * tensors, which metadata) is decided by the code that captures and restores models; this package
 * writes it durably and atomically, verifies it on the way back, and keeps the last few.
 *
 * <h2>Classes</h2>
 * {@link dev.optsidecar.server.snapshot.SnapshotStore} is the one entry point; each job behind it
 * has its own class:
 * <ul>
 *   <li>{@code SnapshotFiles}: the names below the root (model directories, ids, dot-names), in one place;</li>
 *   <li>{@code Reservations}: the ids issued and the snapshots being written, per model directory;</li>
 *   <li>{@code SnapshotWriter}: stage and commit (temporary directory, files, manifest, rename, fsync);</li>
 *   <li>{@code Retention}: keeping the newest snapshots, removing leftovers;</li>
 *   <li>{@code SnapshotVerifier} and {@code SnapshotReader}: checking, listing and opening snapshots;</li>
 *   <li>{@code Tombstones} and {@code Exports}: the deleted-model marker and the exported weights;</li>
 *   <li>{@code SafetensorsWriter}, {@code SafetensorsFile} and {@code Manifest}: the file formats.</li>
 * </ul>
 * Fsync and file-tree utilities come from {@link dev.optsidecar.server.fileutil}.
 *
 * <h2>Snapshot format</h2>
 *
 * <h3>Layout</h3>
 * <pre>
 * &lt;root&gt;/
 *   &lt;model-dir&gt;/                 one per model
 *     000006/                    a committed snapshot (id: per-model counter, 6+ decimal digits)
 *       weights.safetensors      data files, as many as the capture writes
 *       state.safetensors
 *       manifest.json            what the snapshot holds, with each file's size and CRC32C
 *       manifest.crc32c          CRC32C of manifest.json: 8 lowercase hex digits and a newline
 *     000007/
 *     .tmp-000008/               being written (or left by a crash): never read
 *     .del-000005/               being deleted: never read
 *     journal-000006.log         the step journal after snapshot 000006: written and deleted by
 *                                {@link dev.optsidecar.server.durability}, never touched here
 *     DELETED                    tombstone: the model was deleted, its snapshots are kept
 *   exports/
 *     &lt;model-dir&gt;/
 *       v1200-eval.safetensors        weights only, not resumable
 *       v1200-eval.safetensors.json   sidecar describing it
 * </pre>
 *
 * <p><b>Model directory names</b> are a reversible, collision-free encoding of the model name (any
 * non-empty Unicode string): its UTF-8 bytes URL-encoded as {@link java.net.URLEncoder} does
 * (letters, digits, {@code _} and {@code -} kept, space as {@code +}, every other byte as
 * {@code %XX}), with {@code .} and {@code *} also escaped ({@code %2E}, {@code %2A}), a leading
 * {@code -} escaped ({@code %2D}), and the first letter of a name that would read as
 * {@code exports} in any case escaped. So {@code org/team model.v2} lives in
 * {@code org%2Fteam+model%2Ev2}; no directory name is {@code .}, {@code ..} or starts with a dot.
 * An encoding longer than 200 characters is cut to 160 and suffixed with {@code ~} and 32 hex
 * digits of the name's SHA-256 ({@code ~} never occurs otherwise); the real name of every model
 * is in its manifests.
 *
 * <p><b>Ids</b> are zero-padded to 6 digits ({@code 000001}) and increase per model: the next id is
 * one more than the largest id in use, committed, staged, being deleted or claimed by another
 * file in the model directory (a journal file, as the store's
 * {@link dev.optsidecar.server.snapshot.IdClaims} tell it). Within a process an id is never issued
 * twice, even if its snapshot failed or was deleted.
 *
 * <h3>Data files</h3>
 * Each data file is a standard <a href="https://github.com/huggingface/safetensors">safetensors</a>
 * file, readable by {@code safetensors.torch.load_file}: an 8-byte little-endian header length
 * {@code N}; {@code N} bytes of UTF-8 JSON,
 * {@code {"__metadata__": {string: string}, "<key>": {"dtype": "F32", "shape": [...],
 * "data_offsets": [begin, end]}, ...}}, padded with trailing spaces so that {@code 8 + N} is a
 * multiple of 8; then the tensors' little-endian float32 data, back to back in header order, the
 * offsets relative to the end of the header. A scalar has shape {@code []} and one element. Only
 * F32 is written or read.
 *
 * <h3>manifest.json</h3>
 * <pre>
 * {
 *   "format" : "optsidecar-snapshot",
 *   "format_version" : 2,
 *   "model" : "org/team model.v2",
 *   "id" : "000007",
 *   "version" : 1200,                        model version: steps applied
 *   "trigger" : "steps",                     rpc, register, steps, interval, shutdown, fork, add_tensors, ...
 *   "created_unix_millis" : 1763722146000,   when the data was captured (staged)
 *   "model_meta" : { ... },                  the capturing code's JSON, verbatim
 *   "files" : {
 *     "weights.safetensors" : { "bytes" : 4000128, "crc32c" : "1a2b3c4d", "tensors" : 12 }
 *   }
 * }
 * </pre>
 *
 * <p><b>Format versions.</b> A manifest of any version from 1 to the current one is read; newer
 * ones are refused (an older server cannot know what they changed). The storage layout is the
 * same in all of them; what changed is what the model code keeps in {@code model_meta}, and the
 * model code upgrades an older snapshot's metadata when it loads it:
 * <ul>
 *   <li>2: each group's counters in {@code model_meta.state} (and in the clients' stored step
 *       results) are a {@code scalars} map holding the scalars its algorithm declares, e.g.
 *       {@code {"k": 12.0, "weight_sum": 1.2e-6, "lr_max": 5.0e-4}}.</li>
 *   <li>1: they were the fields {@code k}, {@code weightSum} and {@code lrMax}, present for every
 *       algorithm (left at 0, 0 and −1 by those without Schedule-Free's counters).</li>
 * </ul>
 *
 * <h3>Validity</h3>
 * A snapshot is valid only if {@code manifest.crc32c} matches {@code manifest.json}, the manifest
 * parses and names this model and id, and every listed file exists with exactly the listed size
 * and CRC32C (and, when opened, a well-formed header with the listed number of tensors). Anything
 * else (a missing or truncated file, a flipped byte, bad JSON) makes it corrupt; corrupt snapshots
 * are listed with their problem but never loaded, and
 * {@link dev.optsidecar.server.snapshot.SnapshotStore#openLatestValid} falls back to the newest
 * valid one, logging a warning for each it skips.
 *
 * <h3>Writing: stage, then commit</h3>
 * <ol>
 *   <li>Stage (while the caller holds the model steady): reserve the id, create
 *       {@code .tmp-<id>}, stream each file through a 1 MiB direct buffer, computing its CRC32C in
 *       the same pass. No fsync.</li>
 *   <li>Commit: fsync every file; write and fsync {@code manifest.json} and
 *       {@code manifest.crc32c}; fsync {@code .tmp-<id>}; rename it atomically to {@code <id>};
 *       fsync the model directory. A crash at any point leaves either no snapshot or a complete
 *       one.</li>
 *   <li>Retention: keep the newest {@code keep} committed snapshots of the model; each older one
 *       is renamed to {@code .del-<id>} and then deleted, so a half-deleted directory never looks
 *       like a snapshot. Leftover {@code .tmp-} and {@code .del-} directories (not being written
 *       right now) are removed, and the model directory is fsynced. Other files (the journals)
 *       are left to the code that owns them.</li>
 * </ol>
 * New directories are created as needed and their parent fsynced.
 *
 * <h3>Exports</h3>
 * {@code exports/<model-dir>/v<version>-<view>.safetensors}, where view is {@code train},
 * {@code eval}, {@code slow}, {@code ema-<decay>} (e.g. {@code ema-0.999}) or
 * {@code slot-<name>}: one safetensors file of weights with {@code __metadata__}
 * {@code {"format": "optsidecar-export", "resumable": "false", "model", "version", "view"}},
 * beside a sidecar {@code <same name>.json}:
 * {@code {"kind": "export", "resumable": false, "model", "version", "view", "bytes", "crc32c"}}.
 * Both are written under a temporary name, fsynced and renamed into place (replacing an earlier
 * export of the same version and view), then the directory is fsynced. Exports are for serving
 * and evaluation; they hold no optimizer state and cannot be resumed from.
 */
package dev.optsidecar.server.snapshot;
