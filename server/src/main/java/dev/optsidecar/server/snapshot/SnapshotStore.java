package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.NullNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.View;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Level;
import java.util.logging.Logger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.CRC32C;

/**
 * Model snapshots and exports on disk; the layout and format are described in
 * {@link dev.optsidecar.server.snapshot the package documentation}.
 *
 * <p>Writing a snapshot is two phases: {@link #stage} writes the data into a temporary directory
 * as fast as the disk takes it (no fsync), while the caller still holds the model steady;
 * {@link #commit} then makes it durable and atomically visible, and applies retention. Reading
 * verifies sizes and CRC32C checksums first, so a torn or damaged snapshot is never loaded.
 *
 * <p>Thread-safe. Id allocation and the cleanup of temporary directories are coordinated for all
 * stores on the same root within one process.
 */
public final class SnapshotStore {
    private static final Logger LOG = Logger.getLogger(SnapshotStore.class.getName());

    static final String TMP_PREFIX = ".tmp-";
    static final String DEL_PREFIX = ".del-";
    static final String TOMBSTONE = "DELETED";
    static final String EXPORT_FORMAT = "optsidecar-export";
    private static final Pattern ID = Pattern.compile("[0-9]{6,18}");
    private static final Pattern JOURNAL = Pattern.compile("journal-([0-9]{1,18})\\.log");

    /** Per model directory (by real path): the last id issued and the temp dirs being written. */
    private static final Map<Path, ModelState> STATES = new ConcurrentHashMap<>();
    private static final AtomicLong EXPORT_SEQUENCE = new AtomicLong();

    private static final class ModelState {
        long lastIssued;
        final Set<String> inFlight = new HashSet<>();
    }

    private final Path root;
    private final Path realRoot;
    private final int keep;

    /**
     * @param root the state directory, created if absent
     * @param keep how many committed snapshots to keep per model (at least 1)
     */
    public SnapshotStore(Path root, int keep) throws IOException {
        if (keep < 1) {
            throw new IllegalArgumentException("keep must be at least 1, got " + keep);
        }
        this.keep = keep;
        this.root = root.toAbsolutePath().normalize();
        Path parent = this.root.getParent();
        if (parent != null) {
            Files.createDirectories(parent);
            ensureDir(this.root, parent);
        } else {
            Files.createDirectories(this.root);
        }
        this.realRoot = this.root.toRealPath();
    }

    public Path root() {
        return root;
    }

    /** Retained snapshots per model. */
    public int keep() {
        return keep;
    }

    /** Directory of one model (it may not exist yet); it also holds other code's journal files. */
    public Path modelDir(String model) {
        return root.resolve(ModelNames.encode(model));
    }

    // ------------------------------------------------------------------------------------------
    // Writing

    /**
     * Phase 1: reserves the next id for {@code model} and writes every file into a temporary
     * directory, without fsync. If anything fails, the temporary directory is removed (the id
     * stays used) and the error is rethrown.
     */
    public Pending stage(String model, String trigger, long version, JsonNode modelMeta, List<FileOut> files)
            throws IOException {
        Objects.requireNonNull(trigger, "trigger");
        String dirName = ModelNames.encode(model);
        Set<String> names = new HashSet<>();
        for (FileOut f : files) {
            String problem = Manifest.fileNameProblem(f.name());
            if (problem != null) {
                throw new IllegalArgumentException(problem);
            }
            if (!names.add(f.name())) {
                throw new IllegalArgumentException("file name '" + f.name() + "' is given twice");
            }
        }
        Path modelDir = root.resolve(dirName);
        ensureDir(modelDir, root);
        ModelState st = state(dirName);
        String id;
        Path temp;
        synchronized (st) {
            long next = Math.max(st.lastIssued, maxIdOnDisk(modelDir)) + 1;
            while (true) {
                id = formatId(next);
                temp = modelDir.resolve(TMP_PREFIX + id);
                try {
                    Files.createDirectory(temp);
                    break;
                } catch (FileAlreadyExistsException e) {
                    next++;
                }
            }
            st.lastIssued = next;
            st.inFlight.add(id);
        }
        long created = System.currentTimeMillis();
        List<Manifest.FileEntry> written = new ArrayList<>(files.size());
        ByteBuffer buf = IoBuffers.take();
        try {
            for (FileOut f : files) {
                try (FileChannel ch = FileChannel.open(temp.resolve(f.name()), StandardOpenOption.CREATE_NEW,
                        StandardOpenOption.WRITE)) {
                    SafetensorsWriter.Written w = SafetensorsWriter.write(ch, f.metadata(), f.tensors(), buf);
                    written.add(new Manifest.FileEntry(f.name(), w.bytes(), w.crc32c(), w.tensors()));
                }
            }
        } catch (IOException | RuntimeException | Error e) {
            deleteQuietly(temp);
            synchronized (st) {
                st.inFlight.remove(id);
            }
            throw e;
        } finally {
            IoBuffers.give(buf);
        }
        return new Pending(model, dirName, id, version, trigger, created,
                modelMeta == null ? NullNode.getInstance() : modelMeta.deepCopy(), temp, written);
    }

    /**
     * Phase 2: fsyncs each file, writes and fsyncs manifest.json and manifest.crc32c, fsyncs the
     * temporary directory, renames it atomically to its id and fsyncs the model directory; then
     * applies retention (whose failures are logged, not thrown: the snapshot is committed). If it
     * fails before the rename, the temporary directory is removed and the snapshot is lost.
     */
    public SnapshotInfo commit(Pending p) throws IOException {
        p.transition(Pending.State.STAGED, Pending.State.COMMITTING);
        Path modelDir = root.resolve(p.modelDirName());
        Path finalDir = modelDir.resolve(p.id());
        ModelState st = state(p.modelDirName());
        Path temp = p.tempDir();
        boolean moved = false;
        long bytes = p.bytes();
        try {
            for (Manifest.FileEntry f : p.files()) {
                try (FileChannel ch = FileChannel.open(temp.resolve(f.name()), StandardOpenOption.WRITE)) {
                    ch.force(true);
                }
            }
            Manifest manifest = p.manifest();
            byte[] json = manifest.toJson();
            CRC32C crc = new CRC32C();
            crc.update(json);
            byte[] crcLine = (Json.hex((int) crc.getValue()) + "\n").getBytes(StandardCharsets.US_ASCII);
            writeDurably(temp.resolve(Manifest.FILE_NAME), json);
            writeDurably(temp.resolve(Manifest.CRC_FILE_NAME), crcLine);
            bytes += json.length + crcLine.length;
            forceDir(temp);
            synchronized (st) {
                Files.move(temp, finalDir, StandardCopyOption.ATOMIC_MOVE);
                moved = true;
                st.inFlight.remove(p.id());
            }
            forceDir(modelDir);
        } catch (IOException | RuntimeException | Error e) {
            if (!moved) {
                deleteQuietly(temp);
                synchronized (st) {
                    st.inFlight.remove(p.id());
                }
                p.tryTransition(Pending.State.COMMITTING, Pending.State.ABORTED);
            } else {
                p.tryTransition(Pending.State.COMMITTING, Pending.State.COMMITTED);
            }
            throw e;
        }
        p.tryTransition(Pending.State.COMMITTING, Pending.State.COMMITTED);
        synchronized (st) {
            try {
                applyRetention(modelDir, st);
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
    public void abort(Pending p) {
        try {
            if (!p.tryTransition(Pending.State.STAGED, Pending.State.ABORTED)) {
                return;
            }
            deleteQuietly(p.tempDir());
            ModelState st = state(p.modelDirName());
            synchronized (st) {
                st.inFlight.remove(p.id());
            }
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "aborting snapshot " + p.id() + " of model '" + p.model() + "' failed", e);
        }
    }

    private void applyRetention(Path modelDir, ModelState st) throws IOException {
        List<Long> ids = committedIds(modelDir);
        int excess = Math.max(0, ids.size() - keep);
        for (int i = 0; i < excess; i++) {
            String id = formatId(ids.get(i));
            Path doomed = modelDir.resolve(DEL_PREFIX + id);
            Files.move(modelDir.resolve(id), doomed, StandardCopyOption.ATOMIC_MOVE);
            deleteRecursively(doomed);
        }
        long oldestKept = ids.isEmpty() ? 0 : ids.get(excess);
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                Matcher j = JOURNAL.matcher(name);
                if (j.matches() && Long.parseLong(j.group(1)) < oldestKept) {
                    Files.deleteIfExists(e);
                } else if (name.startsWith(DEL_PREFIX)
                        || name.startsWith(TMP_PREFIX) && !st.inFlight.contains(name.substring(TMP_PREFIX.length()))) {
                    deleteRecursively(e);
                }
            }
        }
        forceDir(modelDir);
    }

    // ------------------------------------------------------------------------------------------
    // Reading

    /** The model's committed snapshots, oldest first, each verified (sizes and CRC32C of every file). */
    public List<SnapshotInfo> list(String model) {
        return list(model, true);
    }

    /**
     * As {@link #list(String)}; with {@code readData} false only the manifest's checksum and the
     * files' presence and sizes are checked, without reading the data.
     */
    public List<SnapshotInfo> list(String model, boolean readData) {
        return listDir(model, ModelNames.encode(model), readData);
    }

    /** Every model's snapshots, tombstoned models included, ordered by model then id. */
    public List<SnapshotInfo> listAll() {
        List<SnapshotInfo> all = new ArrayList<>();
        for (String dirName : modelDirNames()) {
            String model = modelName(dirName);
            all.addAll(listDir(model == null ? dirName : model, dirName, true));
        }
        all.sort(Comparator.comparing(SnapshotInfo::getModel).thenComparingLong(i -> Long.parseLong(i.getId())));
        return all;
    }

    private List<SnapshotInfo> listDir(String model, String dirName, boolean readData) {
        Path modelDir = root.resolve(dirName);
        if (!Files.isDirectory(modelDir)) {
            return List.of();
        }
        List<SnapshotInfo> out = new ArrayList<>();
        try {
            for (long id : committedIds(modelDir)) {
                Verified v = verify(model, dirName, formatId(id), readData, false);
                if (v != null) {
                    out.add(v.info());
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    /**
     * Opens one snapshot after verifying the manifest and every file's size, CRC32C and header.
     *
     * @throws NoSuchFileException       if the model has no committed snapshot of that id
     * @throws CorruptSnapshotException  if it fails verification
     */
    public Snapshot open(String model, String id) throws IOException {
        String dirName = ModelNames.encode(model);
        Path dir = root.resolve(dirName).resolve(id);
        Verified v = null;
        if (ID.matcher(id).matches() && formatId(Long.parseLong(id)).equals(id) && Files.isDirectory(dir)) {
            v = verify(model, dirName, id, true, true);
        }
        if (v == null) {
            throw new NoSuchFileException(dirName + "/" + id, null, "model '" + model + "' has no snapshot " + id);
        }
        if (v.problem() != null) {
            throw new CorruptSnapshotException(model, id, v.problem());
        }
        return new Snapshot(v.info(), v.manifest(), dir, v.files());
    }

    /**
     * Opens the newest snapshot that passes verification, logging a warning for each newer one
     * that does not.
     *
     * @throws NoSuchFileException      if the model has no snapshots
     * @throws CorruptSnapshotException if none is valid
     */
    public Snapshot openLatestValid(String model) throws IOException {
        String dirName = ModelNames.encode(model);
        Path modelDir = root.resolve(dirName);
        List<Long> ids = Files.isDirectory(modelDir) ? committedIds(modelDir) : List.of();
        List<String> problems = new ArrayList<>();
        for (int i = ids.size() - 1; i >= 0; i--) {
            String id = formatId(ids.get(i));
            try {
                return open(model, id);
            } catch (CorruptSnapshotException e) {
                String next = i > 0 ? "falling back to " + formatId(ids.get(i - 1)) : "no older snapshot to fall back to";
                LOG.warning(String.format(Locale.ROOT, "snapshot %s of model '%s' is corrupt (%s); %s", id, model,
                        e.problem(), next));
                problems.add(id + " (" + e.problem() + ")");
            } catch (NoSuchFileException e) {
                // Removed by retention meanwhile; older ones follow.
            }
        }
        if (problems.isEmpty()) {
            throw new NoSuchFileException(dirName, null, "model '" + model + "' has no snapshots");
        }
        throw CorruptSnapshotException.noneValid(model, String.join(", ", problems));
    }

    /** Names of the models that have committed snapshots and are not tombstoned, sorted. */
    public List<String> models() {
        List<String> out = new ArrayList<>();
        for (String dirName : modelDirNames()) {
            if (Files.exists(root.resolve(dirName).resolve(TOMBSTONE))) {
                continue;
            }
            String model = modelName(dirName);
            if (model != null) {
                out.add(model);
            }
        }
        out.sort(null);
        return out;
    }

    // ------------------------------------------------------------------------------------------
    // Tombstones

    /** Marks a model deleted: {@link #models()} skips it; its snapshots stay and can still be listed and opened. */
    public void tombstone(String model) throws IOException {
        Path modelDir = modelDir(model);
        ensureDir(modelDir, root);
        Path marker = modelDir.resolve(TOMBSTONE);
        if (!Files.exists(marker)) {
            writeDurably(marker, ("deleted_unix_millis " + System.currentTimeMillis() + "\n")
                    .getBytes(StandardCharsets.US_ASCII));
            forceDir(modelDir);
        }
    }

    public void clearTombstone(String model) throws IOException {
        Path modelDir = modelDir(model);
        if (Files.deleteIfExists(modelDir.resolve(TOMBSTONE))) {
            forceDir(modelDir);
        }
    }

    public boolean isTombstoned(String model) {
        return Files.exists(modelDir(model).resolve(TOMBSTONE));
    }

    // ------------------------------------------------------------------------------------------
    // Exports

    /**
     * Writes {@code file}'s tensors as {@code exports/<model-dir>/v<version>-<view>.safetensors}
     * (atomically, replacing an earlier export of the same version and view) with a JSON sidecar
     * beside it. {@code file}'s name is ignored; its metadata is kept, under the export's own keys.
     */
    public ExportInfo export(String model, long version, View label, FileOut file) throws IOException {
        String view = viewLabel(label);
        String dirName = ModelNames.encode(model);
        Path exports = root.resolve(ModelNames.EXPORTS);
        ensureDir(exports, root);
        Path dir = exports.resolve(dirName);
        ensureDir(dir, exports);
        String name = "v" + Long.toUnsignedString(version) + "-" + view + ".safetensors";
        Map<String, String> metadata = new LinkedHashMap<>(file.metadata());
        metadata.put("format", EXPORT_FORMAT);
        metadata.put("resumable", "false");
        metadata.put("model", model);
        metadata.put("version", Long.toUnsignedString(version));
        metadata.put("view", view);

        Path target = dir.resolve(name);
        Path temp = dir.resolve(TMP_PREFIX + EXPORT_SEQUENCE.incrementAndGet() + "-" + name);
        Path sidecarTarget = dir.resolve(name + ".json");
        Path sidecarTemp = dir.resolve(temp.getFileName() + ".json");
        SafetensorsWriter.Written w;
        ByteBuffer buf = IoBuffers.take();
        try {
            try (FileChannel ch = FileChannel.open(temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                w = SafetensorsWriter.write(ch, metadata, file.tensors(), buf);
                ch.force(true);
            }
            ObjectNode sidecar = Json.MAPPER.createObjectNode();
            sidecar.put("kind", "export");
            sidecar.put("resumable", false);
            sidecar.put("model", model);
            sidecar.put("version", version);
            sidecar.put("view", view);
            sidecar.put("bytes", w.bytes());
            sidecar.put("crc32c", Json.hex(w.crc32c()));
            byte[] sidecarJson = Json.PRETTY.writeValueAsBytes(sidecar);
            writeDurably(sidecarTemp, sidecarJson);
            Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE);
            Files.move(sidecarTemp, sidecarTarget, StandardCopyOption.ATOMIC_MOVE);
            forceDir(dir);
        } catch (IOException | RuntimeException | Error e) {
            deleteQuietly(temp);
            deleteQuietly(sidecarTemp);
            throw e;
        } finally {
            IoBuffers.give(buf);
        }
        return ExportInfo.newBuilder()
                .setModel(model)
                .setVersion(version)
                .setView(label)
                .setPath(ModelNames.EXPORTS + "/" + dirName + "/" + name)
                .setBytes(w.bytes())
                .build();
    }

    /**
     * A view's label in file names: {@code train}, {@code eval}, {@code slow}, {@code ema-<decay>}
     * (e.g. {@code ema-0.999}) or {@code slot-<name>}. Rejects unspecified and none.
     */
    public static String viewLabel(View view) {
        return switch (view.getKind()) {
            case VIEW_TRAIN -> "train";
            case VIEW_EVAL -> "eval";
            case VIEW_SLOW -> "slow";
            case VIEW_EMA -> view.getEmaDecay() == 0 ? "ema"
                    : "ema-" + BigDecimal.valueOf(view.getEmaDecay()).stripTrailingZeros().toPlainString();
            case VIEW_SLOT -> {
                if (view.getSlot().isEmpty()) {
                    throw new IllegalArgumentException("a slot view needs the slot's name");
                }
                yield "slot-" + ModelNames.encode(view.getSlot());
            }
            default -> throw new IllegalArgumentException("cannot export view " + view.getKind());
        };
    }

    // ------------------------------------------------------------------------------------------
    // Verification

    private record Verified(SnapshotInfo info, Manifest manifest, Map<String, SafetensorsFile> files,
                            String problem) {}

    /** What is wrong with a snapshot: the file first, then what, e.g. "weights.safetensors: missing". */
    private static final class Problem extends Exception {
        Problem(String message) {
            super(message, null, false, false);
        }
    }

    /** Verifies one committed snapshot; null if its directory vanished meanwhile (retention). */
    private Verified verify(String model, String dirName, String id, boolean readData, boolean openFiles) {
        Path dir = root.resolve(dirName).resolve(id);
        SnapshotInfo.Builder info = SnapshotInfo.newBuilder().setModel(model).setId(id).setPath(dirName + "/" + id);
        Manifest manifest = null;
        Map<String, SafetensorsFile> files = new LinkedHashMap<>();
        String problem = null;
        try {
            info.setBytes(directoryBytes(dir));
            manifest = readManifest(dir);
            info.setVersion(manifest.version()).setCreatedUnixMillis(manifest.createdUnixMillis())
                    .setTrigger(manifest.trigger());
            if (!manifest.id().equals(id)) {
                throw new Problem(Manifest.FILE_NAME + ": names snapshot " + manifest.id());
            }
            if (!ModelNames.encode(manifest.model()).equals(dirName)) {
                throw new Problem(Manifest.FILE_NAME + ": names model '" + manifest.model() + "'");
            }
            info.setModel(manifest.model());
            for (Manifest.FileEntry f : manifest.files()) {
                SafetensorsFile sf = checkFile(dir, f, readData, openFiles);
                if (sf != null) {
                    files.put(f.name(), sf);
                }
            }
        } catch (Problem e) {
            problem = e.getMessage();
        } catch (IOException e) {
            problem = "unreadable (" + e + ")";
        }
        if (problem != null && !Files.isDirectory(dir)) {
            return null;
        }
        info.setValid(problem == null);
        if (problem != null) {
            info.setProblem(problem);
        }
        return new Verified(info.build(), manifest, files, problem);
    }

    private static Manifest readManifest(Path dir) throws Problem, IOException {
        Path json = dir.resolve(Manifest.FILE_NAME);
        Path crcFile = dir.resolve(Manifest.CRC_FILE_NAME);
        if (!Files.isRegularFile(json)) {
            throw new Problem(Manifest.FILE_NAME + ": missing");
        }
        if (!Files.isRegularFile(crcFile)) {
            throw new Problem(Manifest.CRC_FILE_NAME + ": missing");
        }
        int expected;
        try {
            expected = Json.parseHex(Files.readString(crcFile, StandardCharsets.US_ASCII).strip());
        } catch (NumberFormatException | IOException e) {
            throw new Problem(Manifest.CRC_FILE_NAME + ": malformed");
        }
        byte[] bytes = Files.readAllBytes(json);
        CRC32C crc = new CRC32C();
        crc.update(bytes);
        if ((int) crc.getValue() != expected) {
            throw new Problem(Manifest.FILE_NAME + ": CRC32C mismatch");
        }
        try {
            return Manifest.parse(bytes);
        } catch (Manifest.Invalid e) {
            throw new Problem(Manifest.FILE_NAME + ": " + e.getMessage());
        }
    }

    private static SafetensorsFile checkFile(Path dir, Manifest.FileEntry f, boolean readData, boolean open)
            throws Problem, IOException {
        Path p = dir.resolve(f.name());
        if (!Files.isRegularFile(p)) {
            throw new Problem(f.name() + ": missing");
        }
        long size = Files.size(p);
        if (size != f.bytes()) {
            throw new Problem(f.name() + (size < f.bytes() ? ": truncated, " : ": too long, ") + size
                    + " bytes where the manifest says " + f.bytes());
        }
        if (readData && crc32c(p) != f.crc32c()) {
            throw new Problem(f.name() + ": CRC32C mismatch");
        }
        if (!open) {
            return null;
        }
        SafetensorsFile sf;
        try {
            sf = SafetensorsFile.open(p);
        } catch (SafetensorsFormatException e) {
            throw new Problem(e.getMessage());
        }
        if (sf.tensors().size() != f.tensors()) {
            throw new Problem(f.name() + ": header lists " + sf.tensors().size() + " tensors, the manifest "
                    + f.tensors());
        }
        return sf;
    }

    /** CRC32C of a whole file, read once through a direct buffer. */
    static int crc32c(Path p) throws IOException {
        CRC32C crc = new CRC32C();
        ByteBuffer buf = IoBuffers.take();
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
            while (ch.read(buf.clear()) >= 0) {
                buf.flip();
                crc.update(buf);
            }
        } finally {
            IoBuffers.give(buf);
        }
        return (int) crc.getValue();
    }

    private static long directoryBytes(Path dir) throws IOException {
        long total = 0;
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(dir)) {
            for (Path e : entries) {
                BasicFileAttributes a = Files.readAttributes(e, BasicFileAttributes.class);
                if (a.isRegularFile()) {
                    total += a.size();
                }
            }
        }
        return total;
    }

    // ------------------------------------------------------------------------------------------
    // Directories and files

    /** The real model name for a model directory, from its newest readable manifest, else decoded from the name. */
    private String modelName(String dirName) {
        Path modelDir = root.resolve(dirName);
        List<Long> ids;
        try {
            ids = committedIds(modelDir);
        } catch (IOException e) {
            return null;
        }
        if (ids.isEmpty()) {
            return null;
        }
        for (int i = ids.size() - 1; i >= 0; i--) {
            try {
                Manifest m = readManifest(modelDir.resolve(formatId(ids.get(i))));
                if (ModelNames.encode(m.model()).equals(dirName)) {
                    return m.model();
                }
            } catch (Problem | IOException | IllegalArgumentException e) {
                // Try an older one.
            }
        }
        return ModelNames.decode(dirName);
    }

    /** Root entries that are model directories (not dot-names, not the exports directory), sorted. */
    private List<String> modelDirNames() {
        List<String> out = new ArrayList<>();
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(root)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                if (!name.startsWith(".") && !name.equals(ModelNames.EXPORTS) && Files.isDirectory(e)) {
                    out.add(name);
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        out.sort(null);
        return out;
    }

    /** Committed snapshot ids of a model directory, ascending. */
    private static List<Long> committedIds(Path modelDir) throws IOException {
        List<Long> ids = new ArrayList<>();
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                if (ID.matcher(name).matches() && formatId(Long.parseLong(name)).equals(name) && Files.isDirectory(e)) {
                    ids.add(Long.parseLong(name));
                }
            }
        } catch (NoSuchFileException e) {
            return List.of();
        }
        ids.sort(null);
        return ids;
    }

    /** The largest id any entry uses: committed, staged, being deleted, or named by a journal. */
    private static long maxIdOnDisk(Path modelDir) throws IOException {
        long max = 0;
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                Matcher j = JOURNAL.matcher(name);
                String digits = j.matches() ? j.group(1)
                        : name.startsWith(TMP_PREFIX) ? name.substring(TMP_PREFIX.length())
                        : name.startsWith(DEL_PREFIX) ? name.substring(DEL_PREFIX.length())
                        : name;
                if (ID.matcher(digits).matches() || j.matches()) {
                    max = Math.max(max, Long.parseLong(digits));
                }
            }
        }
        return max;
    }

    static String formatId(long id) {
        return String.format(Locale.ROOT, "%06d", id);
    }

    private ModelState state(String dirName) {
        return STATES.computeIfAbsent(realRoot.resolve(dirName), k -> new ModelState());
    }

    /** Creates {@code dir} if absent and then fsyncs {@code parent} so that the new entry is durable. */
    private static void ensureDir(Path dir, Path parent) throws IOException {
        if (Files.isDirectory(dir)) {
            return;
        }
        try {
            Files.createDirectory(dir);
        } catch (FileAlreadyExistsException e) {
            if (Files.isDirectory(dir)) {
                return;
            }
            throw e;
        }
        forceDir(parent);
    }

    /** Forces a directory's entries (a created or renamed file) to disk. */
    public static void forceDir(Path dir) throws IOException {
        try (FileChannel ch = FileChannel.open(dir, StandardOpenOption.READ)) {
            ch.force(true);
        }
    }

    private static void writeDurably(Path p, byte[] bytes) throws IOException {
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            SafetensorsWriter.writeFully(ch, ByteBuffer.wrap(bytes));
            ch.force(true);
        }
    }

    static void deleteRecursively(Path p) throws IOException {
        if (!Files.exists(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        Files.walkFileTree(p, new SimpleFileVisitor<>() {
            @Override
            public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) throws IOException {
                Files.deleteIfExists(file);
                return FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult postVisitDirectory(Path dir, IOException exc) throws IOException {
                if (exc != null) {
                    throw exc;
                }
                Files.deleteIfExists(dir);
                return FileVisitResult.CONTINUE;
            }
        });
    }

    private static void deleteQuietly(Path p) {
        try {
            deleteRecursively(p);
        } catch (IOException | RuntimeException e) {
            LOG.log(Level.WARNING, "could not delete " + p.getFileName(), e);
        }
    }
}
