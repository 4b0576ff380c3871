package dev.optsidecar.server.snapshot;

import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.observe.Progress;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.zip.CRC32C;

/**
 * Checks one committed snapshot against its manifest: the manifest's own checksum, then every
 * file's presence, size and (when reading data) CRC32C, and (when opening) its header.
 */
final class SnapshotVerifier {
    private static final java.util.logging.Logger LOG =
            java.util.logging.Logger.getLogger(SnapshotVerifier.class.getName());
    private final SnapshotFiles files;

    SnapshotVerifier(SnapshotFiles files) {
        this.files = files;
    }

    /** The outcome: {@code problem} is null for a valid snapshot; {@code files} holds what was opened. */
    record Verified(SnapshotInfo info, Manifest manifest, Map<String, SafetensorsFile> files, String problem) {}

    /** What is wrong with a snapshot: the file first, then what, e.g. "weights.safetensors: missing". */
    static final class Problem extends Exception {
        Problem(String message) {
            super(message, null, false, false);
        }
    }

    /** Verifies one committed snapshot; null if its directory vanished meanwhile (retention). */
    Verified verify(String model, String dirName, String id, boolean readData, boolean openFiles) {
        Path dir = files.modelDir(dirName).resolve(id);
        SnapshotInfo.Builder info = SnapshotInfo.newBuilder().setModel(model).setId(id).setPath(dirName + "/" + id);
        Manifest manifest = null;
        Map<String, SafetensorsFile> opened = new LinkedHashMap<>();
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
            long dataBytes = manifest.files().stream().mapToLong(Manifest.FileEntry::bytes).sum();
            Progress progress = Progress.start(LOG, "verify_snapshot", manifest.model(),
                    "verifying snapshot " + id + " of model '" + manifest.model() + "'", "bytes", dataBytes);
            for (Manifest.FileEntry f : manifest.files()) {
                SafetensorsFile sf = checkFile(dir, f, readData, openFiles, readData ? progress : null);
                if (sf != null) {
                    opened.put(f.name(), sf);
                }
            }
            progress.finish();
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
        return new Verified(info.build(), manifest, opened, problem);
    }

    /** Reads a snapshot's manifest after checking it against manifest.crc32c. */
    static Manifest readManifest(Path dir) throws Problem, IOException {
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

    private static SafetensorsFile checkFile(Path dir, Manifest.FileEntry f, boolean readData, boolean open,
                                             Progress progress)
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
        if (readData && crc32c(p, progress) != f.crc32c()) {
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
    private static int crc32c(Path p, Progress progress) throws IOException {
        CRC32C crc = new CRC32C();
        ByteBuffer buf = IoBuffers.take();
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
            while (ch.read(buf.clear()) >= 0) {
                buf.flip();
                progress.advance(buf.remaining());
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
}
