package dev.optsidecar.server.durability;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelCapture;
import dev.optsidecar.server.model.ModelLoader;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.PendingModel;
import dev.optsidecar.server.model.StepRecord;
import dev.optsidecar.server.snapshot.CorruptSnapshotException;
import dev.optsidecar.server.snapshot.Pending;
import dev.optsidecar.server.snapshot.Snapshot;
import dev.optsidecar.server.snapshot.SnapshotStore;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * Keeps models durable in a state directory: snapshots (on request, on registration, every N
 * steps, every T seconds, at shutdown), the step journal after each snapshot, and restoring a
 * model from its latest valid snapshot plus the journaled steps after it.
 */
public final class Persistence implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(Persistence.class.getName());

    /**
     * @param journal     how far each step's journal record is pushed before it is applied; null: no journal
     * @param everySteps  snapshot after every this many steps; 0 for never
     * @param interval    snapshot models that changed this often; null for never
     * @param compactJournal snapshot a model once its journal outgrows its last snapshot
     */
    public record Options(Path dir, int keep, StepJournal.Sync journal, long everySteps, Duration interval,
                          boolean compactJournal) {}

    private final SnapshotStore store;
    private final ModelRegistry registry;
    private final Options options;
    private final Map<Model, Tracked> tracked = new ConcurrentHashMap<>();
    /** The server's thread for snapshots taken in the background; {@link #shutdown} stops it. */
    private final ScheduledExecutorService background;

    public Persistence(ModelRegistry registry, Options options, ScheduledExecutorService background)
            throws IOException {
        this.registry = registry;
        this.options = options;
        this.background = background;
        StateDir.checkUsable(options.dir());
        this.store = new SnapshotStore(options.dir(), options.keep(), JournalFiles::snapshotId);
        if (options.interval() != null) {
            long ms = options.interval().toMillis();
            background.scheduleWithFixedDelay(() -> snapshotChanged("interval"), ms, ms, TimeUnit.MILLISECONDS);
        }
    }

    public SnapshotStore store() {
        return store;
    }

    /** A model was just created (registered, forked or restored): its first snapshot is its base. */
    public SnapshotInfo adopt(Model m, String trigger) {
        Tracked t = new Tracked(new JournalSwitch((version, journalBytes) -> stepRecorded(m, version, journalBytes)));
        tracked.put(m, t);
        m.setStepLog(t.log);
        try {
            store.clearTombstone(m.name());
            return snapshot(m, trigger);
        } catch (IOException | RuntimeException e) {
            forget(m);
            throw e instanceof OptError oe ? oe
                    : OptError.internal(e, "model '%s': cannot write its first snapshot: %s", Echo.of(m.name()),
                    e.getMessage());
        }
    }

    /** Writes a snapshot of {@code m} and starts a new journal after it. One snapshot of a model at a time. */
    public SnapshotInfo snapshot(Model m, String trigger) throws IOException {
        Tracked t = tracked.get(m);
        if (t == null) {
            throw OptError.notFound("model '%s' was deleted", Echo.of(m.name())).withReason(OptError.Reason.MODEL_NOT_FOUND)
                    .with("model", Echo.of(m.name()));
        }
        JournalSwitch log = t.log;
        synchronized (log) {
            long started = System.nanoTime();
            Pending staged = ModelCapture.capture(m, (version, meta, files) -> {
                Pending p = store.stage(m.name(), trigger, version, meta, files);
                if (options.journal() != null) {
                    try {
                        Path journal = JournalFiles.path(store.modelDir(m.name()), p.id());
                        log.rotate(StepJournal.create(journal, m.name(), m.run(), p.id(), version, options.journal())
                                .timed((append, fsync) -> registry.metrics().journalAppend(m.name(), append, fsync)));
                    } catch (IOException | RuntimeException e) {
                        store.abort(p);
                        throw e;
                    }
                }
                return p;
            });
            try {
                SnapshotInfo info = store.commit(staged);
                deleteUnneededJournals(m.name(), info.getId());
                t.snapshotVersion = info.getVersion();
                t.snapshotBytes = info.getBytes();
                registry.metrics().snapshotTaken(m.name(), System.nanoTime() - started, info.getBytes());
                LogEvent.info(LOG, "snapshot", m.name(), () -> String.format("model '%s': snapshot %s at version %d"
                        + " (%s, %d bytes)", m.name(), info.getId(), info.getVersion(), trigger, info.getBytes()),
                        "snapshot", info.getId(), "version", info.getVersion(), "trigger", trigger,
                        "bytes", info.getBytes());
                return info;
            } catch (IOException | RuntimeException e) {
                store.abort(staged);
                throw e;
            }
        }
    }

    /**
     * Loads a model from its snapshots. Without an id: the latest valid snapshot, then every
     * journaled step after it (the model as of its last acknowledged step). With an id: exactly
     * that snapshot, as a new timeline. The restored model gets a fresh snapshot as its base.
     */
    public Model restore(String model, String id, String asName, boolean replace) throws IOException {
        if (!id.isEmpty() && !SnapshotStore.isId(id)) {
            throw OptError.invalid("id: '%s' is not a snapshot id (six or more digits, as ListSnapshots lists them)",
                    Echo.of(id));
        }
        String name = asName.isEmpty() ? model : asName;
        record Loaded(Snapshot snapshot, PendingModel pending) {
        }
        Loaded loaded = id.isEmpty()
                ? store.loadLatestValid(model, s -> new Loaded(s, load(s, model, name, replace)))
                : new Loaded(store.open(model, id), null);
        Snapshot snapshot = loaded.snapshot();
        PendingModel pending = loaded.pending() != null ? loaded.pending() : load(snapshot, model, name, replace);
        int replayed;
        try {
            if (id.isEmpty()) {
                replayed = replayJournals(model, snapshot, pending.model());
            } else {
                replayed = 0;
                pending.model().startNewRun();
            }
        } catch (IOException | RuntimeException e) {
            pending.discard();
            throw e;
        }
        // Visible before its base snapshot is committed, the model takes no step until it is: a step
        // journaled under a run that no committed snapshot starts would be lost in a crash (the
        // restart would restore the timeline this one replaces).
        pending.model().holdSteps("it is being restored and its first snapshot is not written yet");
        Model replaced = replace ? registry.find(name) : null;
        Model m = replace ? pending.publishReplacing() : pending.publish();
        try {
            if (replaced != null) {
                forget(replaced);
            }
            int steps = replayed;
            LogEvent.info(LOG, "restore", name, () -> String.format("model '%s': restored from snapshot %s of '%s'"
                    + " (version %d) and %d journaled steps: now at version %d", name, snapshot.id(), model,
                    snapshot.version(), steps, m.version()), "snapshot", snapshot.id(), "from_model", model,
                    "snapshot_version", snapshot.version(), "journaled_steps", steps, "version", m.version());
            adopt(m, "restore");
        } finally {
            m.releaseSteps();
        }
        return m;
    }

    /**
     * Loads a verified snapshot. Contents that pass their checksums but cannot be loaded (a spec,
     * counters or tensors the server refuses, a manifest that does not parse) are reported as a
     * corrupt snapshot naming the file, so that a restore falls back to an older snapshot and the
     * Restore RPC answers DATA_LOSS rather than INTERNAL. Refusals that are not about the
     * snapshot (memory limit, name taken) pass through unchanged.
     */
    private PendingModel load(Snapshot snapshot, String model, String name, boolean replace) throws IOException {
        try {
            return ModelLoader.fromSnapshot(registry, snapshot, name, replace);
        } catch (OptError e) {
            if (e.field().startsWith("spec.name")) {
                throw e; // about the name restored under, not the snapshot
            }
            switch (e.kind()) {
                case INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED, DATA_LOSS, INTERNAL -> throw unloadable(model, snapshot, e);
                default -> throw e;
            }
        } catch (CorruptSnapshotException e) {
            throw e;
        } catch (dev.optsidecar.server.snapshot.SafetensorsFormatException | RuntimeException e) {
            throw unloadable(model, snapshot, e);
        }
    }

    private static CorruptSnapshotException unloadable(String model, Snapshot snapshot, Exception e) {
        String reason = e.getMessage() == null || e.getMessage().isBlank() ? e.getClass().getSimpleName() : e.getMessage();
        // Tensor problems name their .safetensors file already; everything else was read from the manifest.
        String file = reason.contains(".safetensors") ? "" : "manifest.json: ";
        LOG.log(Level.FINE, "snapshot " + snapshot.id() + " of model '" + model + "' cannot be loaded", e);
        return new CorruptSnapshotException(model, snapshot.id(), file + "cannot be loaded: " + reason);
    }

    /**
     * Restores at startup: "latest" (every model), "MODEL" (its latest) or "MODEL@ID". With
     * "latest", a model none of whose snapshots can be loaded is left out with a warning, so that
     * one bad model never keeps the server, and every other model, from starting.
     */
    public List<Model> restoreAtStartup(String what) throws IOException {
        List<Model> out = new ArrayList<>();
        if (what.equals("latest")) {
            for (String model : store.models()) {
                try {
                    out.add(restore(model, "", "", false));
                } catch (CorruptSnapshotException e) {
                    LOG.warning(String.format("--restore latest: model '%s' is not restored and stays unloaded: %s",
                            model, e.getMessage()));
                }
            }
            return out;
        }
        int at = what.lastIndexOf('@');
        String model = at < 0 ? what : what.substring(0, at);
        String id = at < 0 ? "" : what.substring(at + 1);
        out.add(restore(model, id, "", false));
        return out;
    }

    /** Replays the steps journaled after {@code snapshot}, through every later journal of the same run. */
    private int replayJournals(String model, Snapshot snapshot, Model m) throws IOException {
        long from = Long.parseLong(snapshot.id());
        List<Path> journals = JournalFiles.list(store.modelDir(model)).stream()
                .filter(j -> j.snapshotId() >= from).map(JournalFiles.Journal::file).toList();
        int replayed = 0;
        for (Path file : journals) {
            try (JournalReader r = JournalReader.open(file)) {
                if (!r.run().equals(m.run())) {
                    continue;
                }
                while (true) {
                    StepRecord step;
                    try {
                        step = r.next();
                    } catch (RuntimeException e) { // a record that passed its checksum but does not parse
                        replayStopped(model, file, m, "cannot be read", e);
                        return replayed;
                    }
                    if (step == null) {
                        break;
                    }
                    if (step.versionBefore() < m.version()) {
                        continue; // already in the snapshot
                    }
                    if (step.versionBefore() > m.version()) {
                        LOG.severe(String.format("model '%s': journal %s jumps from version %d to %d; the steps after"
                                + " it are not replayed", model, file.getFileName(), m.version(), step.versionBefore()));
                        return replayed;
                    }
                    try {
                        m.replay(step);
                    } catch (RuntimeException e) { // checked before it touched the model: it stays as it was
                        replayStopped(model, file, m, "cannot be replayed", e);
                        return replayed;
                    }
                    replayed++;
                }
                if (r.problem() != null) {
                    LOG.warning(String.format("model '%s': journal %s ends with %d unusable bytes (%s): a step cut"
                            + " short by a crash, never acknowledged; ignored", model, file.getFileName(),
                            r.unreadBytes(), r.problem()));
                }
            } catch (IOException e) {
                LOG.log(Level.WARNING, "model '" + model + "': journal " + file.getFileName() + " is unreadable; skipped", e);
            }
        }
        return replayed;
    }

    /** A record the replay cannot use: the model stays at its last good version and still starts. */
    private static void replayStopped(String model, Path file, Model m, String why, RuntimeException e) {
        LOG.log(Level.WARNING, String.format("model '%s': journal %s: the record of the step to version %d %s (%s);"
                + " the model stays at version %d and the steps after it are not replayed", Echo.of(model),
                file.getFileName(), m.version() + 1, why, e.getMessage() != null ? e.getMessage() : e, m.version()), e);
    }

    /** Writes a view of a model's weights for deployment (not a snapshot). */
    public ExportInfo export(Model m, View view) throws IOException {
        return ModelCapture.captureView(m, view, (version, label, file) -> store.export(m.name(), version, label, file));
    }

    /** A model was replaced by an extended copy of itself (AddTensors): stop journaling it; its snapshots stay. */
    public void retired(Model m) {
        forget(m);
    }

    /** A model was deleted: stop journaling it and keep `--restore latest` from bringing it back. */
    public void deleted(Model m) {
        forget(m);
        try {
            store.tombstone(m.name());
        } catch (IOException e) {
            LOG.log(Level.WARNING, "model '" + m.name() + "': cannot mark its snapshots deleted", e);
        }
    }

    /** Graceful shutdown: stops every model's steps and snapshots the ones that changed since their last snapshot. */
    public void shutdown() {
        // Steps first: a step being applied waits for nothing but its own work, and once none can be
        // applied, none asks for a background snapshot on an executor that is shut down (it would fail
        // the step after it was journaled, and lose it from memory).
        for (Model m : registry.models()) {
            m.stopAcceptingSteps();
        }
        background.shutdownNow();
        snapshotChanged("shutdown");
    }

    private void snapshotChanged(String trigger) {
        for (Model m : registry.models()) {
            Tracked t = tracked.get(m);
            if (t != null && t.snapshotVersion != m.version()) {
                try {
                    snapshot(m, trigger);
                } catch (IOException | RuntimeException e) {
                    LOG.log(Level.SEVERE, "model '" + m.name() + "': " + trigger + " snapshot failed", e);
                }
            }
        }
    }

    /**
     * After a step is recorded: snapshot every N steps, and whenever the journal has outgrown the
     * last snapshot (replaying it would then cost more than loading a fresh snapshot).
     */
    private void stepRecorded(Model m, long version, long journalBytes) {
        Tracked t = tracked.get(m);
        if (t == null) {
            return;
        }
        String trigger = options.everySteps() > 0 && version % options.everySteps() == 0 ? "steps"
                : options.compactJournal() && journalBytes >= t.snapshotBytes ? "journal"
                : null;
        if (trigger == null || !t.queued.compareAndSet(false, true)) {
            return;
        }
        try {
            background.execute(() -> {
                t.queued.set(false);
                try {
                    if (tracked.containsKey(m)) {
                        snapshot(m, trigger);
                    }
                } catch (IOException | RuntimeException e) {
                    LOG.log(Level.SEVERE, "model '" + m.name() + "': snapshot after step " + version + " failed", e);
                }
            });
        } catch (java.util.concurrent.RejectedExecutionException e) {
            // Shutting down: the step stands (it is journaled), and the shutdown snapshot covers it.
            t.queued.set(false);
        }
    }

    /** Waits until the snapshots queued so far (every N steps, journal size) are written. */
    public void awaitBackgroundSnapshots() throws InterruptedException {
        try {
            background.submit(() -> { }).get();
        } catch (java.util.concurrent.ExecutionException | java.util.concurrent.RejectedExecutionException e) {
            // shut down: nothing more will be written
        }
    }

    /** Runs after each commit, as the store's own retention did: a failure is logged, the snapshot stands. */
    private void deleteUnneededJournals(String model, String snapshotId) {
        try {
            JournalRetention.apply(store, model);
        } catch (IOException | UncheckedIOException e) {
            LOG.log(Level.WARNING, "deleting the journals of model '" + model + "' that no kept snapshot needs failed"
                    + " after committing snapshot " + snapshotId, e);
        }
    }

    private void forget(Model m) {
        m.setStepLog(null);
        Tracked t = tracked.remove(m);
        if (t != null) {
            t.log.close();
        }
    }

    /** Closes every model's journal; the server stops the background thread. */
    @Override
    public void close() {
        tracked.values().forEach(t -> t.log.close());
    }

    /** What is kept per durable model: its step log and what its last snapshot was. */
    private static final class Tracked {
        final JournalSwitch log;
        volatile long snapshotVersion = -1;
        /** Size of the last snapshot; the journal is compacted into a new one once it outgrows it. */
        volatile long snapshotBytes = Long.MAX_VALUE;
        /** A background snapshot is queued. */
        final java.util.concurrent.atomic.AtomicBoolean queued = new java.util.concurrent.atomic.AtomicBoolean();

        Tracked(JournalSwitch log) {
            this.log = log;
        }
    }
}
