package dev.optsidecar.server.fileutil;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;

/**
 * Forcing files and directory entries to disk. A file's bytes survive a crash once the file is
 * fsynced; its name (created, renamed or deleted) only once its directory is fsynced as well.
 */
public final class Fsync {
    private Fsync() {}

    /** Forces a file's data and metadata to disk. */
    public static void file(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.WRITE)) {
            ch.force(true);
        }
    }

    /** Forces a directory's entries (a file created, renamed or deleted in it) to disk. */
    public static void dir(Path dir) throws IOException {
        try (FileChannel ch = FileChannel.open(dir, StandardOpenOption.READ)) {
            ch.force(true);
        }
    }

    /** Writes {@code bytes} as the whole of {@code file} (created or truncated) and forces it to disk. */
    public static void write(Path file, byte[] bytes) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            Channels.writeFully(ch, ByteBuffer.wrap(bytes));
            ch.force(true);
        }
    }

    /** Creates {@code dir} if absent and then forces its parent, so that the new entry is durable. */
    public static void createDir(Path dir) throws IOException {
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
        dir(dir.getParent());
    }

    /**
     * Renames {@code from} to {@code to} atomically (replacing {@code to}), then forces the
     * directory: only then does the new name survive a crash. That one fsync also covers earlier
     * renames in the same directory.
     */
    public static void rename(Path from, Path to) throws IOException {
        Files.move(from, to, StandardCopyOption.ATOMIC_MOVE);
        dir(to.getParent());
    }
}
