package dev.optsidecar.server.shm;

import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.FileTime;
import java.util.Objects;
import java.util.Set;

/**
 * A client's segment, opened by the server. Gradients (and weights to set) are read from it and
 * views written into it with positional reads and writes of the open file (one copy each way, as
 * from a mapping), not through a mapping: the client owns the file and may shrink, replace or
 * delete it at any moment, and a mapped page that vanished would fault in the middle of a copy
 * (the JVM raises that fault late, inside whatever native call comes next), while a short read
 * just says so. Every access first checks that the path still names the file opened and that it
 * is still large enough; anything else becomes that client's FAILED_PRECONDITION,
 * SHARED_MEMORY_FAULT. Accesses and {@link #close} are serialized.
 */
public final class SegmentFile implements Segment {
    private final String name;
    private final Path path;
    private final Object fileKey;
    private final FileChannel channel;
    private final SegmentLayout layout;
    private final Runnable onClose;
    private volatile boolean closed;
    /** Positional reads and writes share it; closing takes it alone. */
    private final java.util.concurrent.locks.ReentrantReadWriteLock io = new java.util.concurrent.locks.ReentrantReadWriteLock();

    private SegmentFile(String name, Path path, Object fileKey, FileChannel channel, SegmentLayout layout,
                        Runnable onClose) {
        this.name = name;
        this.path = path;
        this.fileKey = fileKey;
        this.channel = channel;
        this.layout = layout;
        this.onClose = onClose;
    }

    /**
     * Opens {@code name} in {@code dir}: a regular file (a symbolic link is not followed), large
     * enough for {@code layout}; else FAILED_PRECONDITION, SHARED_MEMORY_UNAVAILABLE.
     */
    static SegmentFile open(Path dir, String name, SegmentLayout layout, String field, Runnable onClose) {
        Path path = dir.resolve(name);
        FileChannel channel = null;
        try {
            BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (!attrs.isRegularFile()) {
                throw unavailable(field, name, "is not a regular file");
            }
            channel = FileChannel.open(path, Set.of(StandardOpenOption.READ, StandardOpenOption.WRITE,
                    LinkOption.NOFOLLOW_LINKS));
            long size = channel.size();
            if (size < layout.end()) {
                throw unavailable(field, name, String.format("holds %d bytes, but its offsets need %d for this model",
                        size, layout.end()));
            }
            return new SegmentFile(name, path, attrs.fileKey(), channel, layout, onClose);
        } catch (java.nio.file.NoSuchFileException e) {
            closeQuietly(channel);
            throw unavailable(field, name, "does not exist in the server's --shm-dir");
        } catch (IOException | UnsupportedOperationException e) {
            closeQuietly(channel);
            throw unavailable(field, name, "cannot be opened: " + e.getMessage());
        } catch (RuntimeException e) {
            closeQuietly(channel);
            throw e;
        }
    }

    private static OptError unavailable(String field, String name, String why) {
        return OptError.precondition("%s: segment '%s' %s", field, Echo.of(name), why)
                .withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE).withField(field + ".name")
                .with("segment", Echo.of(name));
    }

    private static void closeQuietly(FileChannel channel) {
        if (channel != null) {
            try {
                channel.close();
            } catch (IOException ignored) {
                // nothing was read from it
            }
        }
    }

    @Override
    public String name() {
        return name;
    }

    @Override
    public SegmentLayout layout() {
        return layout;
    }

    /**
     * Fails with SHARED_MEMORY_FAULT unless the segment's path still names the file opened, at its
     * full size: a client that deleted, replaced or truncated it gets an error, not stale values.
     */
    @Override
    public synchronized void verify() {
        checkOpen();
        try {
            BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (!Objects.equals(attrs.fileKey(), fileKey)) {
                throw fault("was replaced by another file");
            }
        } catch (java.nio.file.NoSuchFileException e) {
            throw fault("was deleted");
        } catch (IOException e) {
            throw fault("cannot be checked: " + e.getMessage());
        }
        checkSize();
    }

    @Override
    public <T> T using(java.util.function.Supplier<T> work) {
        return work.get();
    }

    @Override
    public ByteBuffer read(boolean weights, int tensor, long element, int count, ByteBuffer scratch) {
        scratch.clear().limit(count * Float.BYTES);
        if (weights) {
            readWeights(tensor, element, scratch);
        } else {
            readGradient(tensor, element, scratch);
        }
        return scratch.flip();
    }

    @Override
    public ByteBuffer weightsTarget(int tensor, long element, int count, ByteBuffer scratch) {
        return scratch.clear().limit(count * Float.BYTES);
    }

    @Override
    public void weightsFilled(int tensor, long element, ByteBuffer filled) {
        writeWeights(tensor, element, filled);
    }

    /** Copies the gradient of {@code tensor} from element {@code element} into {@code dst}, filling it. */
    public void readGradient(int tensor, long element, ByteBuffer dst) {
        read(layout.gradient(tensor) + element * Float.BYTES, dst);
    }

    /** Copies the weights of {@code tensor} from element {@code element} into {@code dst}, filling it. */
    public void readWeights(int tensor, long element, ByteBuffer dst) {
        read(layout.weights(tensor) + element * Float.BYTES, dst);
    }

    /** Copies {@code src} into the weights of {@code tensor} from element {@code element}. */
    public void writeWeights(int tensor, long element, ByteBuffer src) {
        long position = layout.weights(tensor) + element * Float.BYTES;
        io.readLock().lock();
        try {
            checkOpen();
            checkSize();
            while (src.hasRemaining()) {
                position += channel.write(src, position);
            }
            checkSize();
        } catch (IOException e) {
            throw fault("cannot be written: " + e.getMessage());
        } finally {
            io.readLock().unlock();
        }
    }

    private void read(long position, ByteBuffer dst) {
        io.readLock().lock();
        try {
            checkOpen();
            checkSize();
            while (dst.hasRemaining()) {
                int n = channel.read(dst, position);
                if (n < 0) {
                    throw fault("ended before its offsets did (was it truncated?)");
                }
                position += n;
            }
        } catch (IOException e) {
            throw fault("cannot be read: " + e.getMessage());
        } finally {
            io.readLock().unlock();
        }
    }

    private void checkSize() {
        long size;
        try {
            size = channel.size();
        } catch (IOException e) {
            throw fault("cannot be checked: " + e.getMessage());
        }
        if (size < layout.end()) {
            throw fault(String.format("shrank to %d bytes; its offsets need %d", size, layout.end()));
        }
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("segment " + name + " was closed");
        }
    }

    private OptError fault(String what) {
        return OptError.precondition("shared segment '%s' %s; the step was not taken from it", Echo.of(name), what)
                .withReason(OptError.Reason.SHARED_MEMORY_FAULT).with("segment", Echo.of(name));
    }

    /**
     * Closes the file; its modification time is set to now (when the path
     * still names it), so that an abandoned segment's grace period counts from its last use.
     */
    @Override
    public void close() {
        io.writeLock().lock(); // waits for reads and writes under way: positional I/O runs on several threads
        try {
            if (closed) {
                return;
            }
            closed = true;
        } finally {
            io.writeLock().unlock();
        }
        try {
            BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (Objects.equals(attrs.fileKey(), fileKey)) {
                Files.setLastModifiedTime(path, FileTime.fromMillis(System.currentTimeMillis()));
            }
        } catch (IOException ignored) {
            // gone already: nothing to sweep
        }
        closeQuietly(channel);
        onClose.run();
    }
}
