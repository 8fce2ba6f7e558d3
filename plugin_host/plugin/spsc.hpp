// A lock-free single-producer single-consumer queue of fixed capacity (a power of two), for handing
// small values between the audio thread and one other thread. push() and pop() never allocate, lock or
// wait: push() says false when the queue is full, pop() false when it is empty. Exactly one thread may
// push and exactly one (other) thread may pop.
#ifndef STEMD_SPSC_HPP
#define STEMD_SPSC_HPP

#include <array>
#include <atomic>
#include <cstddef>
#include <type_traits>

namespace stemd {

template <typename T, size_t Capacity>
class SpscQueue {
    static_assert(Capacity >= 2 && (Capacity & (Capacity - 1)) == 0, "capacity must be a power of two");
    static_assert(std::is_trivially_copyable<T>::value, "values are copied by the audio thread");

public:
    bool push(const T& value) noexcept
    {
        const size_t head = fHead.load(std::memory_order_relaxed);
        if (head - fTail.load(std::memory_order_acquire) == Capacity) return false;
        fItems[head & (Capacity - 1)] = value;
        fHead.store(head + 1, std::memory_order_release);
        return true;
    }

    bool pop(T& value) noexcept
    {
        const size_t tail = fTail.load(std::memory_order_relaxed);
        if (tail == fHead.load(std::memory_order_acquire)) return false;
        value = fItems[tail & (Capacity - 1)];
        fTail.store(tail + 1, std::memory_order_release);
        return true;
    }

private:
    std::array<T, Capacity> fItems{};
    alignas(64) std::atomic<size_t> fHead{0};  // written by the producer
    alignas(64) std::atomic<size_t> fTail{0};  // written by the consumer
};

}  // namespace stemd

#endif
