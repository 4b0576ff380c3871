/**
 * Keeping models durable: {@link dev.optsidecar.server.durability.Persistence} decides when to
 * snapshot and restores models; the step journal records every step between snapshots.
 *
 * <h2>Classes</h2>
 * <ul>
 *   <li>{@code Persistence}: snapshot triggers, restore with journal replay, journal rotation;</li>
 *   <li>{@code JournalFiles}: journal file names, in one place (making, recognising, listing);</li>
 *   <li>{@code StepJournal} and {@code JournalReader}: writing and reading the journal format;</li>
 *   <li>{@code JournalSwitch}: a model's step log, moved to a new journal at each snapshot;</li>
 *   <li>{@code JournalRetention}: deleting the journals no kept snapshot needs.</li>
 * </ul>
 * Snapshots themselves are stored by {@link dev.optsidecar.server.snapshot}; fsync and other file
 * utilities come from {@link dev.optsidecar.server.fileutil}.
 *
 * <h2>Journal format</h2>
 *
 * <h3>Layout</h3>
 * Journals live in the model's directory, beside its snapshots:
 * <pre>
 * &lt;state-dir&gt;/&lt;model-dir&gt;/
 *   000007/                  a snapshot (see the snapshot package)
 *   journal-000007.log       the steps applied after snapshot 000007
 *   journal-000008.log       the steps applied after snapshot 000008
 * </pre>
 * A journal is named after the snapshot it follows: {@code journal-<id>.log} with the snapshot's id
 * as the store spells it. Its file is created while the snapshot is staged, so a journal can name
 * a snapshot that was never committed; the store never issues that id again (the journal claims
 * it).
 *
 * <h3>Records</h3>
 * A journal is a sequence of records, each
 * <pre>
 * magic        4 bytes, little-endian int: "OSJN" for the file header, "STEP" for a step
 * length       4 bytes, little-endian int: the JSON header's length (at most 1 MiB)
 * header       UTF-8 JSON
 * gradients    (steps only) float32 little-endian, tensor by tensor, skipping tensors without one
 * crc32c       4 bytes, little-endian: CRC32C of everything above
 * </pre>
 * The first record's header is {@code {"model", "run", "after_snapshot", "version"}}. Each step's
 * header holds {@code version_before}, {@code sum_of_squares}, {@code lr_scale},
 * {@code staleness}, {@code contributions} ({@code [{"client_id", "step_id"}]}, step ids as
 * unsigned decimal strings), {@code no_grad} (indices of tensors without a gradient),
 * {@code numel} (every tensor's element count) and {@code group_hyperparameters} (each group's
 * hyperparameter changes from that step on, learning rate included, as JSON objects; journals
 * written before hyperparameters could change hold {@code group_lr}, learning rates by group,
 * instead). A set-weights step adds {@code "kind": "set_weights"} (and {@code "weights_view":
 * "eval"} for weights at Schedule-Free's x); its payload holds weights where a step's holds
 * gradients.
 *
 * <h3>Durability</h3>
 * The header record is fsynced at creation, and the model directory after it (fsync after
 * create). Each step is appended before it is applied and acknowledged: with {@code --journal
 * fsync} the record is then fsynced, with {@code write} only handed to the operating system. A
 * record that fails to write is truncated away. A record cut short by a crash fails its checksum
 * and ends the journal: its step was never acknowledged.
 *
 * <h3>Replay and retention</h3>
 * Restoring the latest snapshot S replays the journals of S and of later snapshots, in id order,
 * those of the snapshot's run only; steps already in the snapshot are skipped and a gap in
 * versions stops the replay. So after each committed snapshot (and the store's retention), the
 * journals of snapshots older than the oldest kept one chain onto nothing and are deleted.
 *
 * <p>A model that gains tensors (AddTensors) is a new run: its first snapshot (trigger
 * {@code add_tensors}) is written before it replaces the model, so the journals after it hold only
 * steps of the new shape, and the old run's journals are never replayed onto it.
 */
package dev.optsidecar.server.durability;
