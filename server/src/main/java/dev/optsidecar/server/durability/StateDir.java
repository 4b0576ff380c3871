package dev.optsidecar.server.durability;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** Checks at startup that the state directory can hold snapshots, so a bad one stops the server at once. */
public final class StateDir {
    private StateDir() {}

    /**
     * Creates {@code dir} if missing, then creates and deletes a probe file in it: a read-only mount,
     * a missing permission or a full disk shows up now, not at the first snapshot.
     */
    public static void checkUsable(Path dir) throws IOException {
        if (Files.exists(dir) && !Files.isDirectory(dir)) {
            throw new IOException("state directory " + dir + " is not a directory");
        }
        Path probe = dir.resolve(".probe-" + ProcessHandle.current().pid());
        try {
            Files.createDirectories(dir);
            Files.write(probe, new byte[] {0});
            Files.delete(probe);
        } catch (IOException e) {
            throw new IOException("state directory " + dir + " is not writable: " + describe(e), e);
        }
    }

    private static String describe(IOException e) {
        String kind = e.getClass().getSimpleName();
        return e.getMessage() == null ? kind : kind + " " + e.getMessage();
    }
}
