package dev.optsidecar.server.snapshot;

import dev.optsidecar.server.fileutil.Fsync;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.regex.Pattern;

/**
 * The names in a state directory, in one place: model directories, snapshot ids and the entries
 * of a model directory (the layout is in {@link dev.optsidecar.server.snapshot the package
 * documentation}).
 */
final class SnapshotFiles {
    static final String TMP_PREFIX = ".tmp-";
    static final String DEL_PREFIX = ".del-";
    static final String TOMBSTONE = "DELETED";
    private static final Pattern ID = Pattern.compile("[0-9]{6,18}");

    private final Path root;
    private final Path realRoot;
    private final IdClaims claims;

    /** Opens the state directory {@code root}, creating it if absent. */
    SnapshotFiles(Path root, IdClaims claims) throws IOException {
        this.root = root.toAbsolutePath().normalize();
        this.claims = claims;
        Path parent = this.root.getParent();
        if (parent != null) {
            Files.createDirectories(parent);
            Fsync.createDir(this.root);
        } else {
            Files.createDirectories(this.root);
        }
        this.realRoot = this.root.toRealPath();
    }

    Path root() {
        return root;
    }

    Path modelDir(String dirName) {
        return root.resolve(dirName);
    }

    /** The model directory resolved against the root's real path: the same for every store on that root. */
    Path realModelDir(String dirName) {
        return realRoot.resolve(dirName);
    }

    static String formatId(long id) {
        return String.format(Locale.ROOT, "%06d", id);
    }

    /** Whether {@code name} is a snapshot id as the store spells it, e.g. {@code 000007}. */
    static boolean isId(String name) {
        return ID.matcher(name).matches() && formatId(Long.parseLong(name)).equals(name);
    }

    /** Committed snapshot ids of a model directory, ascending; none if it does not exist. */
    static List<Long> committedIds(Path modelDir) throws IOException {
        List<Long> ids = new ArrayList<>();
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                if (isId(name) && Files.isDirectory(e)) {
                    ids.add(Long.parseLong(name));
                }
            }
        } catch (NoSuchFileException e) {
            return List.of();
        }
        ids.sort(null);
        return ids;
    }

    /** The largest id any entry uses: committed, staged, being deleted, or claimed by other code's file. */
    long maxIdInUse(Path modelDir) throws IOException {
        long max = 0;
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                String digits = name.startsWith(TMP_PREFIX) ? name.substring(TMP_PREFIX.length())
                        : name.startsWith(DEL_PREFIX) ? name.substring(DEL_PREFIX.length())
                        : name;
                if (ID.matcher(digits).matches()) {
                    max = Math.max(max, Long.parseLong(digits));
                }
                max = Math.max(max, claims.claimedId(name));
            }
        }
        return max;
    }

    /** Root entries that are model directories (not dot-names, not the exports directory), sorted. */
    List<String> modelDirNames() {
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
}
