package dev.optsidecar.server.shm;

import com.sun.jna.LastErrorException;
import dev.optsidecar.client.UnixCalls;

import java.io.IOException;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A client's sealed segment, mapped: a memfd that cannot shrink (F_SEAL_SHRINK), so no page of
 * the mapping can vanish under a copy, as one of a truncated file would. Views into it are
 * plain byte buffers; a step reads its gradients from them and writes its view into them, one
 * copy each way.
 *
 * <p>Held by the connection that handed it over and by each stream or pull using it; the last
 * {@link #release} unmaps it at once (not when the collector gets to it: the memory is the
 * client's, and a client that died must get it back). Views are used only inside
 * {@link #reading}, which unmapping waits for.
 */
final class SealedMemory {
    /**
     * Mapped in windows of this many bytes (a mapping is indexed by int), each overlapping the
     * next by {@link #WINDOW_OVERLAP} so that a piece up to that size never straddles two.
     */
    static final long WINDOW = 1L << 30;
    static final int WINDOW_OVERLAP = 1 << 20;

    private final String name;
    private final FileChannel channel;
    private final long size;
    /** Windows mapped so far, by index: only those a step touches (a sparse memfd may be huge). */
    private final java.util.Map<Long, MappedByteBuffer> windows = new java.util.concurrent.ConcurrentHashMap<>();
    private final ReentrantReadWriteLock unmapping = new ReentrantReadWriteLock();
    private int holders = 1;
    private boolean unmapped;

    private SealedMemory(String name, FileChannel channel, long size) {
        this.name = name;
        this.channel = channel;
        this.size = size;
    }

    /**
     * Takes descriptor {@code fd} (closing it whatever happens): a file sealed against shrinking
     * and not against writes. Throws {@link Refused} saying why not.
     */
    static SealedMemory take(String name, int fd) throws Refused {
        try {
            int seals;
            try {
                seals = UnixCalls.c().fcntl(fd, UnixCalls.F_GET_SEALS);
            } catch (LastErrorException e) {
                throw new Refused(e.getErrorCode() == UnixCalls.EINVAL
                        ? "the descriptor is not a memfd (it has no seals)" : "its seals cannot be read: " + e.getMessage());
            }
            if ((seals & UnixCalls.F_SEAL_SHRINK) == 0) {
                throw new Refused("the memfd is not sealed against shrinking (add F_SEAL_SHRINK)");
            }
            if ((seals & (UnixCalls.F_SEAL_WRITE | UnixCalls.F_SEAL_FUTURE_WRITE)) != 0) {
                throw new Refused("the memfd is sealed against writes, but the server writes views into it");
            }
            // A descriptor of this process, reopened by path: the client cannot point it elsewhere.
            FileChannel channel = FileChannel.open(Path.of("/proc/self/fd/" + fd), StandardOpenOption.READ,
                    StandardOpenOption.WRITE);
            try {
                return new SealedMemory(name, channel, channel.size());
            } catch (IOException | RuntimeException e) {
                channel.close();
                throw e;
            }
        } catch (IOException e) {
            throw new Refused("the memfd cannot be opened: " + e.getMessage());
        } finally {
            UnixCalls.closeQuietly(fd);
        }
    }

    /** Why a handed-over descriptor was not taken. */
    static final class Refused extends Exception {
        Refused(String why) {
            super(why);
        }
    }

    String name() {
        return name;
    }

    long size() {
        return size;
    }

    /** One more holder; false if it was already unmapped. */
    synchronized boolean hold() {
        if (holders == 0) {
            return false;
        }
        holders++;
        return true;
    }

    /** One holder fewer; the last unmaps it and closes the file. */
    void release() {
        synchronized (this) {
            if (--holders > 0) {
                return;
            }
        }
        unmapping.writeLock().lock();
        try {
            unmapped = true;
            windows.values().forEach(SealedMemory::unmap);
            windows.clear();
        } finally {
            unmapping.writeLock().unlock();
        }
        try {
            channel.close();
        } catch (IOException ignored) {
            // nothing was left to write: views wrote through the mapping
        }
    }

    /** Runs {@code work}, which may use views, with the mapping kept in place. */
    <T> T reading(java.util.function.Supplier<T> work) {
        unmapping.readLock().lock();
        try {
            if (unmapped) {
                throw new IllegalStateException("sealed segment " + name + " was released");
            }
            return work.get();
        } finally {
            unmapping.readLock().unlock();
        }
    }

    /**
     * A little-endian view of bytes [{@code position}, {@code position + bytes}), which must lie in
     * the segment; only inside {@link #reading}.
     */
    ByteBuffer view(long position, int bytes) {
        if (bytes > WINDOW_OVERLAP || position < 0 || position + bytes > size) {
            throw new IllegalArgumentException("bytes [" + position + ", " + (position + bytes) + ") of " + size);
        }
        long w = position / WINDOW;
        MappedByteBuffer window = window(w);
        int at = (int) (position - w * WINDOW);
        return window.slice(at, bytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * Maps the windows covering bytes [0, {@code end}) now, so that a mapping the system refuses
     * (address space, a limit on mappings) is the client's error when its stream opens, not
     * mid-step. Throws IOException saying why.
     */
    void mapThrough(long end) throws IOException {
        try {
            for (long w = 0; w * WINDOW < end; w++) {
                window(w);
            }
        } catch (java.io.UncheckedIOException e) {
            throw e.getCause();
        }
    }

    private MappedByteBuffer window(long w) {
        return windows.computeIfAbsent(w, index -> {
            long start = index * WINDOW;
            try {
                return channel.map(FileChannel.MapMode.READ_WRITE, start, Math.min(WINDOW + WINDOW_OVERLAP, size - start));
            } catch (IOException e) {
                throw new java.io.UncheckedIOException("cannot map sealed segment " + name, e);
            }
        });
    }

    /** Unmaps now (the JDK otherwise unmaps when the buffer is collected). */
    private static void unmap(MappedByteBuffer buffer) {
        if (UNSAFE_INVOKE_CLEANER == null) {
            return;
        }
        try {
            UNSAFE_INVOKE_CLEANER.invoke(THE_UNSAFE, buffer);
        } catch (ReflectiveOperationException e) {
            // left to the collector
        }
    }

    private static final Object THE_UNSAFE;
    private static final java.lang.reflect.Method UNSAFE_INVOKE_CLEANER;

    static {
        Object unsafe = null;
        java.lang.reflect.Method invokeCleaner = null;
        try {
            Class<?> type = Class.forName("sun.misc.Unsafe");
            Field field = type.getDeclaredField("theUnsafe");
            field.setAccessible(true);
            unsafe = field.get(null);
            invokeCleaner = type.getMethod("invokeCleaner", ByteBuffer.class);
        } catch (ReflectiveOperationException | RuntimeException e) {
            // no prompt unmapping on this runtime: the collector does it
        }
        THE_UNSAFE = unsafe;
        UNSAFE_INVOKE_CLEANER = invokeCleaner;
    }
}
