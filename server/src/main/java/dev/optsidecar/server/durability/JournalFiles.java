package dev.optsidecar.server.durability;

import java.io.IOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Journal file names, in one place: the journal that follows snapshot {@code 000007} of a model is
 * {@code journal-000007.log} in the model's directory, beside the snapshots.
 */
final class JournalFiles {
    private static final Pattern NAME = Pattern.compile("journal-([0-9]{1,18})\\.log");

    /** A journal file and the id of the snapshot it follows. */
    record Journal(long snapshotId, Path file) {}

    private JournalFiles() {}

    /** The journal that follows snapshot {@code snapshotId} (as the store spells it, e.g. {@code 000007}). */
    static Path path(Path modelDir, String snapshotId) {
        return modelDir.resolve("journal-" + snapshotId + ".log");
    }

    /** The id of the snapshot a journal file is named after, or -1 if {@code fileName} is no journal's. */
    static long snapshotId(String fileName) {
        Matcher m = NAME.matcher(fileName);
        return m.matches() ? Long.parseLong(m.group(1)) : -1;
    }

    /** The model's journals, in the order of the snapshots they follow. */
    static List<Journal> list(Path modelDir) throws IOException {
        List<Journal> out = new ArrayList<>();
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                long id = snapshotId(e.getFileName().toString());
                if (id >= 0) {
                    out.add(new Journal(id, e));
                }
            }
        }
        out.sort(Comparator.comparingLong(Journal::snapshotId));
        return out;
    }
}
