package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.NullNode;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.fileutil.FileTrees;
import dev.optsidecar.server.fileutil.Fsync;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.logging.Level;
import java.util.logging.Logger;
import java.util.zip.CRC32C;

/**
 * Writes snapshots in two phases: {@link #stage} puts the data in a temporary directory as fast as
 * the disk takes it (no fsync) while the caller holds the model steady; {@link #commit} makes it
 * durable and atomically visible, then applies retention.
 */
final class SnapshotWriter {
    private static final Logger LOG = Logger.getLogger(SnapshotWriter.class.getName());

    private final SnapshotFiles files;
    private final Retention retention;

    SnapshotWriter(SnapshotFiles files, Retention retention) {
        this.files = files;
        this.retention = retention;
    }

    /**
     * Reserves the next id for {@code model} and writes every file into a temporary directory,
     * without fsync. If anything fails, the temporary directory is removed (the id stays used) and
     * the error is rethrown.
     */
    Pending stage(String model, String trigger, long version, JsonNode modelMeta, List<FileOut> outs)
            throws IOException {
        Objects.requireNonNull(trigger, "trigger");
        String dirName = ModelNames.encode(model);
        Set<String> names = new HashSet<>();
        for (FileOut f : outs) {
            String problem = Manifest.fileNameProblem(f.name());
            if (problem != null) {
                throw new IllegalArgumentException(problem);
            }
            if (!names.add(f.name())) {
                throw new IllegalArgumentException("file name '" + f.name() + "' is given twice");
            }
        }
        Path modelDir = files.modelDir(dirName);
        Fsync.createDir(modelDir);
        Reservations r = Reservations.of(files, dirName);
        String id;
        Path temp;
        synchronized (r) {
            long next = Math.max(r.lastIssued, files.maxIdInUse(modelDir)) + 1;
            while (true) {
                id = SnapshotFiles.formatId(next);
                temp = modelDir.resolve(SnapshotFiles.TMP_PREFIX + id);
                try {
                    Files.createDirectory(temp);
                    break;
                } catch (FileAlreadyExistsException e) {
                    next++;
                }
            }
            r.lastIssued = next;
            r.inFlight.add(id);
        }
        long created = System.currentTimeMillis();
        List<Manifest.FileEntry> written = new ArrayList<>(outs.size());
        ByteBuffer buf = IoBuffers.take();
        try {
            for (FileOut f : outs) {
                try (FileChannel ch = FileChannel.open(temp.resolve(f.name()), StandardOpenOption.CREATE_NEW,
                        StandardOpenOption.WRITE)) {
                    SafetensorsWriter.Written w = SafetensorsWriter.write(ch, f.metadata(), f.tensors(), buf);
                    written.add(new Manifest.FileEntry(f.name(), w.bytes(), w.crc32c(), w.tensors()));
                }
            }
        } catch (IOException | RuntimeException | Error e) {
            FileTrees.deleteQuietly(temp);
            r.release(id);
            throw e;
        } finally {
            IoBuffers.give(buf);
        }
        return new Pending(model, dirName, id, version, trigger, created,
                modelMeta == null ? NullNode.getInstance() : modelMeta.deepCopy(), temp, written);
    }

    /**
     * Fsyncs each file, writes and fsyncs manifest.json and manifest.crc32c, fsyncs the temporary
     * directory, renames it atomically to its id and fsyncs the model directory; then applies
     * retention (whose failures are logged, not thrown: the snapshot is committed). If it fails
     * before the rename, the temporary directory is removed and the snapshot is lost.
     */
    SnapshotInfo commit(Pending p) throws IOException {
        p.transition(Pending.State.STAGED, Pending.State.COMMITTING);
        Path modelDir = files.modelDir(p.modelDirName());
        Path finalDir = modelDir.resolve(p.id());
        Reservations r = Reservations.of(files, p.modelDirName());
        Path temp = p.tempDir();
        boolean moved = false;
        long bytes = p.bytes();
        try {
            for (Manifest.FileEntry f : p.files()) {
                Fsync.file(temp.resolve(f.name()));
            }
            Manifest manifest = p.manifest();
            byte[] json = manifest.toJson();
            CRC32C crc = new CRC32C();
            crc.update(json);
            byte[] crcLine = (Json.hex((int) crc.getValue()) + "\n").getBytes(StandardCharsets.US_ASCII);
            Fsync.write(temp.resolve(Manifest.FILE_NAME), json);
            Fsync.write(temp.resolve(Manifest.CRC_FILE_NAME), crcLine);
            bytes += json.length + crcLine.length;
            Fsync.dir(temp);
            // Renamed and released together, so retention never takes the directory for a leftover.
            synchronized (r) {
                Files.move(temp, finalDir, StandardCopyOption.ATOMIC_MOVE);
                moved = true;
                r.inFlight.remove(p.id());
            }
            Fsync.dir(modelDir); // the rename survives a crash only now
        } catch (IOException | RuntimeException | Error e) {
            if (!moved) {
                FileTrees.deleteQuietly(temp);
                r.release(p.id());
                p.tryTransition(Pending.State.COMMITTING, Pending.State.ABORTED);
            } else {
                p.tryTransition(Pending.State.COMMITTING, Pending.State.COMMITTED);
            }
            throw e;
        }
        p.tryTransition(Pending.State.COMMITTING, Pending.State.COMMITTED);
        synchronized (r) {
            try {
                retention.apply(modelDir, r);
            } catch (IOException | UncheckedIOException e) {
                LOG.log(Level.WARNING, "retention for model '" + p.model() + "' failed after committing snapshot "
                        + p.id(), e);
            }
        }
        return SnapshotInfo.newBuilder()
                .setModel(p.model())
                .setId(p.id())
                .setVersion(p.version())
                .setCreatedUnixMillis(p.manifest().createdUnixMillis())
                .setBytes(bytes)
                .setPath(p.modelDirName() + "/" + p.id())
                .setValid(true)
                .setTrigger(p.manifest().trigger())
                .build();
    }

    /**
     * Deletes the temporary directory of a staged snapshot. Never throws; a no-op once a commit
     * has begun (a failing commit cleans up after itself) or the snapshot was aborted.
     */
    void abort(Pending p) {
        try {
            if (!p.tryTransition(Pending.State.STAGED, Pending.State.ABORTED)) {
                return;
            }
            FileTrees.deleteQuietly(p.tempDir());
            Reservations.of(files, p.modelDirName()).release(p.id());
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "aborting snapshot " + p.id() + " of model '" + p.model() + "' failed", e);
        }
    }
}
