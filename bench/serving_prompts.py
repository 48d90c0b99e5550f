"""Prompts of `bench/serving.py`: a shared system prompt, users' turns, long-answer prompts.

The system prompt is the kind a support deployment puts in front of every conversation
(~400 tokens with SmolLM2's tokenizer, printed by the bench); every user of workload (a)
shares it, which is what makes prefix caching pay. The users' questions are short, as a
chat's usually are, so from turn 2 on almost all of a request is a prefix the engine saw.
"""

from __future__ import annotations

SYSTEM_PROMPT = """\
You are Harbor, the customer support assistant of Tidewater Logistics, a company that ships \
parcels and pallets between warehouses, shops and homes in twelve European countries. You \
answer customers who write in through the help centre chat.

How to answer:
- Be friendly, calm and brief. Most answers fit in three to six sentences. Use a short list \
only when the customer must follow steps in order.
- Answer the question that was asked. If a question is ambiguous, ask one clarifying \
question instead of guessing.
- Never invent tracking numbers, prices, delivery dates or policies. If you do not know, say \
so and explain how the customer can find out.
- Do not ask for passwords, full card numbers or identity documents. A tracking number or an \
order reference is enough to look up a shipment.

What you know about Tidewater:
- Standard delivery takes two to four working days inside one country and three to six \
working days between countries. Express delivery arrives the next working day when the \
order is placed before 15:00 local time.
- Customers can change the delivery address or pick a parcel locker until the parcel leaves \
the regional depot; after that only the driver can hand it to a neighbour.
- A parcel that cannot be delivered after two attempts waits at the nearest pick-up point \
for ten days, then goes back to the sender.
- Damaged parcels must be reported within seven days with photos of the box and the \
contents. Refunds for lost parcels are paid to the sender, not to the recipient.
- Pallet deliveries need a booked time slot and someone who can sign on site; the driver \
does not carry pallets up stairs.
- Opening hours of the phone line: Monday to Friday, 8:00 to 18:00, Saturday 9:00 to 13:00.

If a customer is upset, acknowledge the problem first, then give the next concrete step. End \
each answer by asking whether there is anything else you can help with, unless the customer \
is saying goodbye.
"""

# Workload (a): one list per user, one question per turn (up to 4 turns, up to 16 users).
USER_TURNS: list[list[str]] = [
    ["Hi, my parcel was supposed to arrive yesterday and it still hasn't. What can I do?",
     "The tracking page says it is at the regional depot. Can I still change the address?",
     "OK, can I pick it up from a locker instead?", "Thanks. How long will it wait there?"],
    ["How long does a parcel take from Germany to Spain?",
     "And if I pay for express?", "What time do I need to order by for express?",
     "Great, thank you."],
    ["My package arrived with a crushed corner and the vase inside is broken.",
     "I received it four days ago. Is that too late to report it?",
     "What photos do you need exactly?", "Will the refund go to me or to the shop?"],
    ["I need to send two pallets of tiles to a building site next week.",
     "Does the driver bring them up to the third floor?", "How do I book the time slot?",
     "Who has to sign for the delivery?"],
    ["Can you tell me the phone number of your support line?",
     "What are the opening hours on Saturday?", "Is there a way to reach you on Sunday?",
     "Alright, I will write here then."],
    ["The driver tried to deliver twice while I was at work.",
     "Where is my parcel now?", "How many days do I have to collect it?",
     "What happens if I cannot pick it up in time?"],
    ["I'm really annoyed, this is the third late delivery this month!",
     "I don't want excuses, I want to know when it arrives.",
     "Can I get compensation for the delay?", "Fine. Thanks for explaining."],
    ["Do you deliver to Norway?", "Which countries do you deliver to then?",
     "How long does delivery take between two countries?", "Is express available abroad too?"],
    ["Can a neighbour accept my parcel if I am not home?",
     "Can I choose which neighbour?", "What if nobody is home in the whole building?",
     "Thank you, that helps."],
    ["I entered the wrong house number when I ordered.",
     "The parcel left the depot an hour ago. Can it still be fixed?",
     "Can I call the driver directly?", "OK, I will wait for the driver then."],
    ["Is it safe to give you my card number to pay for a redelivery?",
     "So how do I pay the fee?", "Do you accept bank transfers?", "Thanks."],
    ["My tracking number does not work on your website.",
     "It has 14 characters, starting with TW.", "Could the shop have given me a wrong one?",
     "I will ask the shop, thanks."],
    ["How do I return a parcel to the sender?", "Do I need to print a label?",
     "Can I drop it at a parcel locker?", "How long until the shop gets it back?"],
    ["What is the difference between standard and express delivery?",
     "Does express cost more for pallets?", "Can I upgrade an order that is already on its way?",
     "Okay, thanks for the help."],
    ["My parcel shows as delivered but I never got it.",
     "I checked with my neighbours already.", "Who gets the refund if it is lost?",
     "I am the recipient, so what should I do now?"],
    ["Can I schedule a delivery for a specific day?", "What about a time window in the evening?",
     "Does that work for pallets too?", "Thank you very much."],
]

# Workload (b): requests that make a small instruct model write at length (128 tokens
# or more at temperature 0), one per concurrent stream.
LONG_PROMPTS: list[str] = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail, step by step, how bread is made, from the flour to the finished loaf.",
    "Write a long essay about the history of trains and how they changed travel.",
    "Describe in great detail a walk through a busy market in a coastal town at dawn.",
    "Write a long letter from a grandmother to her grandson about her childhood on a farm.",
    "Explain at length how the water cycle works and why it matters for farming.",
    "Write a detailed story about a young inventor who builds a flying bicycle.",
    "Describe, in a long and detailed answer, how to plan a two-week trip across Europe by rail.",
    "Write a long story about two friends who get lost in a forest and find their way home.",
    "Explain in detail how a city library works, from buying books to lending them out.",
    "Write a long diary entry of a sailor crossing the Atlantic on an old ship.",
    "Describe at length the life of honey bees in a hive through the four seasons.",
    "Write a detailed story about a chef who opens a small restaurant in a mountain village.",
    "Explain step by step and in detail how to grow tomatoes in a small garden.",
    "Write a long speech that a school principal gives on the first day of the school year.",
    "Describe in detail how a newspaper is put together, from the morning meeting to printing.",
]
