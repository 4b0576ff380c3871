package dev.optsidecar.server.fileutil;

import java.io.IOException;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.logging.Level;
import java.util.logging.Logger;

/** Deleting a file or a whole directory tree. */
public final class FileTrees {
    private static final Logger LOG = Logger.getLogger(FileTrees.class.getName());

    private FileTrees() {}

    /** Deletes {@code p} and, for a directory, everything below it; nothing if it does not exist. */
    public static void delete(Path p) throws IOException {
        if (!Files.exists(p, LinkOption.NOFOLLOW_LINKS)) {
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

    /** As {@link #delete}, for cleaning up after a failure: logs instead of throwing. */
    public static void deleteQuietly(Path p) {
        try {
            delete(p);
        } catch (IOException | RuntimeException e) {
            LOG.log(Level.WARNING, "could not delete " + p.getFileName(), e);
        }
    }
}
